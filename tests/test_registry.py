import pytest

from prunenas.errors import UnknownNameError
from prunenas.families import FAMILIES
from prunenas.registry import Registry


def test_register_get_iterate_and_decorator():
    reg = Registry("widget")
    reg.register("b", 2)

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and reg.get("b") == 2
    assert list(reg) == ["a", "b"] and "a" in reg and len(reg) == 2


def test_duplicate_name_is_an_error():
    reg = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        reg.register("x", 2)


def test_unknown_name_lists_the_choices():
    reg = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", 2)
    with pytest.raises(UnknownNameError) as err:
        reg.get("gamma")
    assert str(err.value) == "unknown widget 'gamma'; choose one of: alpha, beta"


def test_builtin_families_are_registered():
    assert {"vgg", "resnet_cifar", "preresnet", "densenet", "resnet", "mobilenetv2", "tiny"} <= set(FAMILIES)
