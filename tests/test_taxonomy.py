import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from riskcl.taxonomy import (Taxonomy, cost_matrix_from_mapping, get_taxonomy, list_taxonomies, load_taxonomy,
                             severity_matrix, validate_cost_matrix)


def test_paper_example_matrix_entry_by_entry():
    tax = Taxonomy("ex", ("b1", "b2", "m1", "m2"), (0, 0, 1, 1))
    l1, l2 = 3.0, 7.0
    expected = [[1, 1, l1, l1], [1, 1, l1, l1], [l2, l2, 1, 1], [l2, l2, 1, 1]]
    np.testing.assert_array_equal(severity_matrix(tax, l1, l2), np.array(expected))


def test_isic_matrix_entry_by_entry():
    tax = get_taxonomy("isic2018")
    assert tax.classes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    malignant = {"MEL", "BCC", "AKIEC"}
    m = severity_matrix(tax, 5, 20)
    assert m.shape == (7, 7)
    for i, ci in enumerate(tax.classes):
        for j, cj in enumerate(tax.classes):
            if (ci in malignant) == (cj in malignant):
                want = 1.0
            elif ci in malignant:
                want = 20.0
            else:
                want = 5.0
            assert m[i, j] == want, (ci, cj)


@pytest.mark.parametrize("name,benign,malignant", [
    ("brain_mri", {"notumor"}, {"glioma", "meningioma", "pituitary"}),
    ("breakhis", {"adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma"},
     {"ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma", "papillary_carcinoma"}),
    ("sicapv2", {"NC"}, {"G3", "G4", "G5"}),
])
def test_builtin_hierarchies(name, benign, malignant):
    tax = get_taxonomy(name)
    assert {tax.classes[i] for i in tax.benign_indices} == benign
    assert {tax.classes[i] for i in tax.malignant_indices} == malignant


def test_ordinal_levels_reduce_to_paper_for_two_levels_and_scale_linearly():
    tax = get_taxonomy("sicapv2_gleason")
    m = severity_matrix(tax, 4, 10)
    # G5 (level 3) called NC (0): the full Type II penalty; G3 (1) called NC: a third of the excess.
    assert m[3, 0] == 10 and m[1, 0] == pytest.approx(1 + 9 / 3)
    assert m[0, 3] == 4 and m[0, 1] == pytest.approx(1 + 3 / 3)
    assert np.all(np.diag(m) == 1)
    binary = Taxonomy("b", ("n", "g"), (0, 1))
    np.testing.assert_array_equal(severity_matrix(binary, 4, 10), [[1, 4], [10, 1]])


def test_from_dict_and_yaml(tmp_path):
    a = Taxonomy.from_dict({"name": "x", "classes": {"b": 0, "m": 1}})
    b = Taxonomy.from_dict({"name": "x", "benign": ["b"], "malignant": ["m"]})
    assert a == b
    path = tmp_path / "tax.yaml"
    path.write_text("name: mine\nclasses:\n  healthy: 0\n  lowgrade: 1\n  highgrade: 2\n")
    tax = load_taxonomy(str(path))
    assert tax.classes == ("healthy", "lowgrade", "highgrade") and tax.levels == (0, 1, 2)
    assert load_taxonomy("brain_mri") == get_taxonomy("brain_mri")
    assert set(list_taxonomies()) >= {"brain_mri", "isic2018", "breakhis", "sicapv2"}


@pytest.mark.parametrize("kwargs,match", [
    ({"classes": ("a", "a"), "levels": (0, 1)}, "duplicate class name 'a'"),
    ({"classes": ("a",), "levels": (0,)}, "at least 2 classes"),
    ({"classes": ("a", "b"), "levels": (0,)}, "one severity level per class"),
    ({"classes": ("a", "b"), "levels": (0, -1)}, "level of class 'b'"),
    ({"classes": ("a", "b"), "levels": (0, 1.5)}, "level of class 'b'"),
])
def test_invalid_taxonomies(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Taxonomy("bad", **kwargs)


def test_invalid_inputs_name_the_problem(tmp_path):
    tax = get_taxonomy("brain_mri")
    with pytest.raises(ValueError, match="Unknown class 'tumour'"):
        tax.index("tumour")
    with pytest.raises(ValueError, match="lambda2"):
        severity_matrix(tax, 5, -1)
    with pytest.raises(ValueError, match="lambda1"):
        severity_matrix(tax, float("nan"), 1)
    with pytest.raises(ValueError, match="shape"):
        validate_cost_matrix(np.ones((3, 3)), tax)
    with pytest.raises(ValueError, match="square"):
        validate_cost_matrix(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"entry \[0, 1\]"):
        validate_cost_matrix([[1, -2], [1, 1]])
    with pytest.raises(ValueError, match="finite"):
        validate_cost_matrix([[1, np.inf], [1, 1]])
    with pytest.raises(ValueError, match="Unknown taxonomy"):
        get_taxonomy("nope")
    with pytest.raises(ValueError, match="neither a built-in"):
        load_taxonomy(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="no malignant"):
        Taxonomy("b", ("a", "b"), (0, 0)).require_both_superclasses()
    with pytest.raises(ValueError, match="no benign"):
        Taxonomy("m", ("a", "b"), (1, 2)).require_both_superclasses()
    with pytest.raises(ValueError, match="Unknown taxonomy keys"):
        Taxonomy.from_dict({"name": "x", "clases": {}})


def test_cost_matrix_from_mapping_by_class_names():
    tax = get_taxonomy("brain_mri")
    m = cost_matrix_from_mapping({"glioma": {"notumor": 50}}, tax)
    assert m[tax.index("glioma"), tax.index("notumor")] == 50
    assert m[tax.index("notumor"), tax.index("glioma")] == 1
    with pytest.raises(ValueError, match="Unknown class 'gliomaa'"):
        cost_matrix_from_mapping({"gliomaa": {"notumor": 5}}, tax)


_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=True) |
                       st.text(max_size=8), lambda c: st.lists(c, max_size=3) |
                       st.dictionaries(st.sampled_from(["name", "lr", "root", "params", "lambda2", "x"]), c,
                                       max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "classes", "benign", "malignant", "display_names", "x"]),
                       _values, max_size=4))
def test_random_taxonomies_give_value_error_or_valid(data):
    from riskcl.taxonomy import Taxonomy, severity_matrix

    try:
        tax = Taxonomy.from_dict(data)
    except ValueError:
        return
    assert severity_matrix(tax, 2, 3).shape == (tax.num_classes,) * 2
