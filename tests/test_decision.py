import numpy as np
import pytest

from riskcl.decision import (conformal_risk_control, control_risk, cost_minimizing_decision, fit_temperature,
                             learn_then_test, softmax, threshold_decision)
from riskcl.metrics import critical_error_rate
from riskcl.taxonomy import get_taxonomy, severity_matrix

TAX = get_taxonomy("brain_mri")  # glioma meningioma notumor pituitary; notumor benign


def _calibrated(n, k=4, seed=0, conc=0.6):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, conc), n)
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


def test_cost_minimizing_rule_never_costlier_than_argmax_in_expectation():
    p, y = _calibrated(4000, seed=1)
    m = severity_matrix(TAX, 5, 20)
    bayes, argmax = cost_minimizing_decision(p, m), p.argmax(1)
    # Expected cost under the model's own probabilities: pointwise minimal by construction.
    exp_bayes = (p * m[:, bayes].T).sum(1)
    exp_arg = (p * m[:, argmax].T).sum(1)
    assert np.all(exp_bayes <= exp_arg + 1e-12)
    # And on labels drawn from those (calibrated) probabilities.
    assert m[y, bayes].mean() <= m[y, argmax].mean()
    assert critical_error_rate(bayes, y, TAX) < critical_error_rate(argmax, y, TAX)


def test_cost_minimizing_rule_with_unit_matrix_is_argmax_for_superclass_choice():
    p = np.array([[0.1, 0.2, 0.6, 0.1]])
    assert cost_minimizing_decision(p, np.ones((4, 4)) - np.eye(4)).tolist() == [2]


def test_threshold_rule():
    p = np.array([[0.2, 0.1, 0.6, 0.1], [0.05, 0.05, 0.85, 0.05], [0.5, 0.1, 0.3, 0.1]])
    assert threshold_decision(p, TAX, 0.3).tolist() == [0, 2, 0]     # p_mal = 0.4, 0.15, 0.7
    assert threshold_decision(p, TAX, 0.1).tolist() == [0, 0, 0]
    assert threshold_decision(p, TAX, 0.99).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="threshold"):
        threshold_decision(p, TAX, 1.5)


def test_temperature_recovers_known_value():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (5000, 4))
    p = softmax(z, 2.0)
    y = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(2.0, rel=0.1)


def _known_curve(n, seed):
    """Malignant scores ~ Beta(4, 1.5): the true miss rate at t is the Beta CDF at t; benign ~ Beta(1.5, 4)."""
    rng = np.random.default_rng(seed)
    y_mal = rng.random(n) < 0.4
    pm = np.where(y_mal, rng.beta(4, 1.5, n), rng.beta(1.5, 4, n))
    probs = np.stack([pm / 3, pm / 3, 1 - pm, pm / 3], 1)  # p(malignant) = pm
    y = np.where(y_mal, rng.choice([0, 1, 3], n), 2)
    return probs, y


def _test_cer_at(probs, y, t):
    return critical_error_rate(threshold_decision(probs, TAX, t), y, TAX)


@pytest.mark.slow
def test_ltt_and_crc_validity_over_200_random_splits():
    probs, y = _known_curve(6000, seed=0)
    alpha, delta = 0.1, 0.1
    rng = np.random.default_rng(1)
    ltt_ok, crc_cers = [], []
    for _ in range(200):
        idx = rng.permutation(len(y))
        cal, test = idx[:600], idx[600:]
        r_ltt = learn_then_test(probs[cal], y[cal], TAX, alpha, delta)
        r_crc = conformal_risk_control(probs[cal], y[cal], TAX, alpha)
        ltt_ok.append(_test_cer_at(probs[test], y[test], r_ltt.threshold) <= alpha)
        crc_cers.append(_test_cer_at(probs[test], y[test], r_crc.threshold))
    assert np.mean(ltt_ok) >= 1 - delta
    # Mean CER within Monte-Carlo error of alpha (test sets of ~2160 malignant cases; 3 standard errors).
    se = np.std(crc_cers) / np.sqrt(len(crc_cers))
    assert np.mean(crc_cers) <= alpha + 3 * se
    # And not vacuous: the thresholds keep real specificity.
    assert r_ltt.calibration_specificity > 0.3 and r_crc.calibration_specificity > 0.3


def test_risk_control_result_fields_and_groups():
    probs, y = _known_curve(800, seed=4)
    r = control_risk("ltt", probs, y, TAX, alpha=0.1, delta=0.2)
    assert r.method == "ltt" and r.unit == "sample" and 0 <= r.threshold <= 1
    assert r.calibration_cer <= 0.1 and "probability >= 0.8" in r.guarantee
    groups = np.arange(800) // 4
    g = control_risk("crc", probs, y, TAX, alpha=0.1, groups=groups)
    assert g.unit == "group" and g.n_calibration <= 200
    with pytest.raises(ValueError, match="Unknown risk-control method"):
        control_risk("bonferroni", probs, y, TAX, 0.1)
    with pytest.raises(ValueError, match="no malignant|found none"):
        control_risk("crc", probs[y == 2], y[y == 2], TAX, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        control_risk("crc", probs, y, TAX, 1.5)


def test_tiny_calibration_set_flags_everything():
    probs, y = _known_curve(20, seed=5)
    r = conformal_risk_control(probs, y, TAX, alpha=0.01)
    assert r.threshold == 0.0 and "too small" in r.guarantee
