"""Permission trees: Read/Write leaves, Access nodes, merging, paths and overlap."""

import attrs
import pytest

import fluxpy as fp
from fluxpy.core.access import overlaps


def test_write_implies_read():
    assert isinstance(fp.Write(), fp.Read)
    assert not isinstance(fp.Read(), fp.Write)


def test_permissions_are_frozen_values():
    assert fp.Read() == fp.Read()
    assert fp.Write() == fp.Write()
    assert fp.Read() != fp.Write()
    assert hash(fp.Access(batch=fp.Read())) == hash(fp.Access(batch=fp.Read()))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fp.Access().items = ()


def test_access_equality_ignores_keyword_order():
    assert fp.Access(model=fp.Read(), batch=fp.Write()) == fp.Access(
        batch=fp.Write(), model=fp.Read()
    )


def test_reads_and_writes_list_full_paths():
    tree = fp.Access(
        batch=fp.Access(loss=fp.Read(), preds=fp.Write()),
        cbstate=fp.Access(history=fp.Read()),
        model=fp.Write(),
    )
    assert tree.reads() == [("batch", "loss"), ("cbstate", "history")]
    assert tree.writes() == [("batch", "preds"), ("model",)]


def test_empty_access_grants_nothing():
    tree = fp.Access()
    assert tree.reads() == []
    assert tree.writes() == []
    assert not tree
    assert tree.permission("batch") is None


def test_permission_of_a_path():
    tree = fp.Access(batch=fp.Access(loss=fp.Read()), model=fp.Write())
    assert tree.permission("batch.loss") == fp.Read()
    assert tree.permission(("model", "coeff")) == fp.Write()
    assert tree.permission("batch.preds") is None
    assert tree.permission("batch") is None  # only part of it is granted


def test_merge_write_wins_over_read():
    merged = fp.Access(batch=fp.Read()) | fp.Access(batch=fp.Write())
    assert merged == fp.Access(batch=fp.Write())
    assert (fp.Access(batch=fp.Write()) | fp.Access(batch=fp.Read())) == merged


def test_merge_combines_disjoint_children():
    merged = fp.Access(batch=fp.Access(loss=fp.Read())) | fp.Access(
        batch=fp.Access(preds=fp.Write()), model=fp.Read()
    )
    assert merged == fp.Access(
        batch=fp.Access(loss=fp.Read(), preds=fp.Write()), model=fp.Read()
    )


def test_merge_read_over_a_tree_reads_all_and_keeps_the_writes():
    merged = fp.Access(batch=fp.Read()) | fp.Access(batch=fp.Access(loss=fp.Write()))
    assert merged.reads() == [("batch",)]
    assert merged.writes() == [("batch", "loss")]
    assert merged.permission("batch.xs") == fp.Read()
    assert merged.permission("batch.loss") == fp.Write()


def test_merge_read_over_a_read_only_tree_is_a_plain_read():
    merged = fp.Access(batch=fp.Access(loss=fp.Read())) | fp.Access(batch=fp.Read())
    assert merged.reads() == [("batch",)]
    assert merged.writes() == []


def test_merge_write_over_a_tree_is_a_plain_write():
    merged = fp.Access(batch=fp.Access(loss=fp.Read())) | fp.Access(batch=fp.Write())
    assert merged == fp.Access(batch=fp.Write())


def test_merge_with_a_non_access_is_a_type_error():
    with pytest.raises(TypeError):
        fp.Access() | fp.Read()


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        (("batch",), ("batch", "loss"), True),
        (("batch", "loss"), ("batch",), True),
        (("batch", "loss"), ("batch", "loss"), True),
        (("batch", "loss"), ("batch", "preds"), False),
        (("model",), ("batch",), False),
        (("cbstate", "history"), ("cbstate", "historyx"), False),
    ],
)
def test_paths_overlap_when_one_is_a_prefix_of_the_other(p, q, expected):
    assert overlaps(p, q) is expected


def test_string_leaf_is_a_type_error_naming_the_entry():
    with pytest.raises(TypeError, match=r"Access\(batch='read'\): 'batch' must be fp\.Read\(\), "
                                        r"fp\.Write\(\) or a nested fp\.Access\(\.\.\.\), not str"):
        fp.Access(batch="read")


def test_permission_class_instead_of_instance_is_a_type_error_naming_the_entry():
    with pytest.raises(TypeError, match=r"Access\(batch=Read\): permissions are instances; "
                                        r"write batch=Read\(\) instead"):
        fp.Access(batch=fp.Read)


def test_nested_bad_leaf_names_the_entry():
    with pytest.raises(TypeError, match=r"Access\(loss=True\): 'loss' must be"):
        fp.Access(batch=fp.Access(loss=True))


@pytest.mark.parametrize("name", ["_fp_obj", "__class__", "__dict__"])
def test_names_of_the_view_itself_cannot_be_granted(name):
    with pytest.raises(TypeError, match=rf"Access\({name}=\.\.\.\): names starting with '__' or "
                                        r"'_fp_' belong to the protected view itself"):
        fp.Access(**{name: fp.Write()})


@pytest.mark.parametrize("name", ["a b", "2nd", "batch.loss", "class", ""])
def test_names_must_be_attribute_names(name):
    with pytest.raises(TypeError, match=rf"Access\({name!r}=\.\.\.\): {name!r} is not an "
                                        "attribute name"):
        fp.Access(**{name: fp.Read()})


def test_repr_shows_the_tree():
    assert repr(fp.Access(batch=fp.Access(loss=fp.Read()))) == "Access(batch=Access(loss=Read()))"


# -- a merged Read() or Write() base: a permission for the names a node does not list -------------


def test_a_read_merged_over_a_tree_covers_the_names_the_tree_does_not_list():
    tree = fp.Access(cbstate=fp.Access(x=fp.Write())) | fp.Access(cbstate=fp.Read())
    assert repr(tree) == "Access(cbstate=Access(Read() for the rest, x=Write()))"
    assert tree.permission("cbstate.x") == fp.Write()
    assert tree.permission("cbstate.other") == fp.Read()
    assert tree.permission("cbstate.other.deeper") == fp.Read()
    assert tree.permission("batch") is None
    assert tree.reads() == [("cbstate",)]
    assert tree.writes() == [("cbstate", "x")]


def test_a_write_merged_over_a_tree_covers_its_reads_too():
    tree = fp.Access(cbstate=fp.Access(x=fp.Read())) | fp.Access(cbstate=fp.Write())
    assert tree.permission("cbstate.x") == fp.Write()
    assert tree.permission("cbstate.other") == fp.Write()
    assert tree.reads() == []
    assert tree.writes() == [("cbstate",)]


def test_a_merge_is_the_same_in_either_order():
    a = fp.Access(cbstate=fp.Access(x=fp.Write()), batch=fp.Access(loss=fp.Read()))
    b = fp.Access(cbstate=fp.Read(), batch=fp.Access(xs=fp.Read()))
    assert a | b == b | a
