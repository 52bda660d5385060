"""Backend registry: resolving names, clear errors for unknown and unavailable backends, registration."""

from __future__ import annotations

from typing import ClassVar

import pytest

from neuroscope.core import registry
from neuroscope.core.protocol import BackendError


class _Mock:
    name: ClassVar[str] = "mock"
    available: ClassVar[bool] = True

    @classmethod
    def is_available(cls) -> bool:
        return cls.available

    @classmethod
    def install_hint(cls) -> str:
        return "pip install neuroscope-mock-backend"


class _Unavailable(_Mock):
    name = "mock-off"
    available = False


class _Broken(_Mock):
    name = "mock-broken"

    @classmethod
    def is_available(cls) -> bool:
        raise RuntimeError("driver exploded")


@pytest.fixture
def registered():
    added = []

    def add(name, cls):
        registry.register(name, lambda: cls)
        added.append(name)

    yield add
    for name in added:
        registry.unregister(name)


def test_unknown_backend_lists_choices_and_what_is_available():
    with pytest.raises(BackendError) as exc:
        registry.resolve("nope")
    msg = str(exc.value)
    assert "'nope'" in msg
    for name in ("auto", "mlx", "torch-cuda", "torch-cpu"):
        assert name in msg
    assert "available here: " + ", ".join(registry.available()) in msg
    assert "\n" not in msg


def test_unavailable_backend_names_it_and_how_to_install(registered):
    registered("mock-off", _Unavailable)
    assert "mock-off" in registry.names()
    assert "mock-off" not in registry.available()
    with pytest.raises(BackendError) as exc:
        registry.resolve("mock-off")
    msg = str(exc.value)
    assert "'mock-off'" in msg and "not available" in msg
    assert "pip install neuroscope-mock-backend" in msg
    assert "\n" not in msg


def test_register_resolve_unregister(registered):
    registered("mock", _Mock)
    assert registry.resolve("mock") is _Mock
    assert "mock" in registry.names() and "mock" in registry.available()
    assert registry.backend_class("mock") is _Mock
    assert registry.install_hint("mock") == "pip install neuroscope-mock-backend"
    registry.unregister("mock")
    assert "mock" not in registry.names()
    with pytest.raises(BackendError, match="unknown backend 'mock'"):
        registry.resolve("mock")


def test_a_backend_whose_availability_check_raises_is_unavailable(registered):
    registered("mock-broken", _Broken)
    assert "mock-broken" not in registry.available()
    with pytest.raises(BackendError, match="not available"):
        registry.resolve("mock-broken")


def test_unregister_unknown_is_harmless():
    before = registry.names()
    registry.unregister("never-registered")
    assert registry.names() == before


def test_auto_resolves_to_an_available_backend():
    avail = registry.available()
    assert avail, "this test machine has at least one backend (torch-cpu)"
    cls = registry.resolve("auto")
    assert cls.name in avail and cls.is_available()


def test_auto_prefers_torch_cpu_over_mlx_without_metal_or_cuda():
    avail = registry.available()
    mlx = registry.backend_class("mlx")
    metal = mlx is not None and "mlx" in avail and getattr(mlx, "uses_metal", lambda: False)()
    if "torch-cpu" not in avail or "torch-cuda" in avail or metal:
        pytest.skip("only meaningful on a CPU-only machine with torch")
    assert registry.resolve("auto").name == "torch-cpu"


@pytest.mark.parametrize("name", ["mlx", "torch-cuda", "torch-cpu"])
def test_builtin_backends_resolve_by_name_or_say_how_to_install(name):
    if name in registry.available():
        assert registry.resolve(name).name == name
    else:
        with pytest.raises(BackendError, match=f"backend '{name}' is not available on this machine.*to use it: "):
            registry.resolve(name)


def test_auto_prefers_mlx_where_metal_is_available(monkeypatch):
    mlx = registry.backend_class("mlx")
    if mlx is None or "mlx" not in registry.available():
        pytest.skip("mlx is not installed here")
    monkeypatch.setattr(mlx, "uses_metal", classmethod(lambda cls: True))
    assert registry.resolve("auto") is mlx
    monkeypatch.setattr(mlx, "uses_metal", classmethod(lambda cls: False))
    assert registry.resolve("auto") is not mlx
