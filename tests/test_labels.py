"""Tasks, class order and user class maps."""

import json

import pytest

from herlev_fa.errors import HerlevError
from herlev_fa.labels import get_task, load_class_map


def test_severity_task_merges_normals_in_severity_order():
    t = get_task("severity")
    assert t.classes == ("normal", "light_dysplastic", "moderate_dysplastic", "severe_dysplastic", "carcinoma_in_situ")
    assert t.severities == (0.0, 1.0, 2.0, 3.0, 4.0)
    for folder in ("normal_superficial", "normal_intermediate", "normal_columnar"):
        assert t.folder_to_class[folder] == "normal"
    assert t.abnormal() == (False, True, True, True, True)


def test_herlev7_keeps_severity_per_class_and_is_not_alphabetical():
    t = get_task("herlev7")
    assert t.n_classes == 7
    assert t.severities == (0, 0, 0, 1, 2, 3, 4)
    assert list(t.classes) != sorted(t.classes)
    assert t.classes[-1] == "carcinoma_in_situ"
    assert not t.has_unique_severities()


def test_binary_task():
    t = get_task("binary")
    assert t.classes == ("normal", "abnormal")
    assert t.class_of_folder("Severe_Dysplastic") == "abnormal"
    assert t.class_of_folder("normal_columnar") == "normal"


@pytest.mark.parametrize("name", ["normal_superficiel", "NORMAL_SUPERFICIEL", "Normal_Superficial",
                                  " normal_superficial "])
def test_folder_aliases_case_insensitive(name):
    assert get_task("severity").class_of_folder(name) == "normal"
    assert get_task("herlev7").class_of_folder(name) == "normal_superficial"


def test_unknown_folder_and_task():
    assert get_task("severity").class_of_folder("results") is None
    with pytest.raises(HerlevError, match="unknown task 'sipakmed'"):
        get_task("sipakmed")


def test_task_json_round_trip():
    t = get_task("severity")
    assert type(t).from_json(json.loads(json.dumps(t.to_json()))) == t
    with pytest.raises(HerlevError, match="malformed"):
        type(t).from_json({"name": "x", "classes": ["a"]})


def test_class_map_yaml_orders_by_severity(tmp_path):
    f = tmp_path / "sipakmed.yaml"
    f.write_text("im_Dyskeratotic: {class: abnormal, severity: 1}\n"
                 "im_Superficial-Intermediate: {class: normal, severity: 0}\n"
                 "im_Parabasal: {class: normal, severity: 0}\n"
                 "im_Koilocytotic: 2\n")
    t = load_class_map(f)
    assert t.classes == ("normal", "abnormal", "im_Koilocytotic")
    assert t.severities == (0.0, 1.0, 2.0)
    assert t.class_of_folder("IM_PARABASAL") == "normal"
    assert t.class_of_folder("im_koilocytotic") == "im_Koilocytotic"


def test_class_map_json(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"good": {"class": "ok", "severity": 0}, "bad": {"class": "ko", "severity": 3}}))
    t = load_class_map(f)
    assert (t.classes, t.severities) == (("ok", "ko"), (0.0, 3.0))


@pytest.mark.parametrize("text,message", [
    ("a: {class: x}\n", "needs a severity"),
    ("a: {class: x, severity: high}\n", "is not a number"),
    ("a: {class: x, severity: 0}\nb: {class: x, severity: 1}\n", "two severities"),
    ("[1, 2]\n", "must map folder names"),
    ("a: [unclosed\n", "is not valid YAML"),
])
def test_class_map_errors(tmp_path, text, message):
    f = tmp_path / "map.yaml"
    f.write_text(text)
    with pytest.raises(HerlevError, match=message):
        load_class_map(f)
    with pytest.raises(HerlevError, match="does not exist"):
        load_class_map(tmp_path / "nope.yaml")
