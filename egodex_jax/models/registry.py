"""Name -> class registries: a new head, encoder or backbone is one module plus its name.

  @heads.register("fm")
  class FlowMatchingHead: ...

  config.model.head = "fm"   # -> heads.get("fm")

Registries hold classes; what a class must provide is written where its registry is defined
(`heads/base.py`, `encoders/__init__.py`, `backbones.py`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
  """A named set of classes; `get` fails with the known names listed."""

  def __init__(self, kind: str):
    self.kind = kind
    self._classes: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    def add(cls):
      if name in self._classes and self._classes[name] is not cls:
        raise ValueError(f"{self.kind} {name!r} is registered twice "
                         f"({self._classes[name].__module__} and {cls.__module__}).")
      self._classes[name] = cls
      cls.registered_name = name
      return cls
    return add

  def unregister(self, name: str) -> None:
    """Removes a name (a plugin or test that registered a class for a while); unknown is an error."""
    self.get(name)
    del self._classes[name]

  def get(self, name: str):
    if name not in self._classes:
      raise ValueError(f"unknown {self.kind} {name!r}; known: {sorted(self._classes)}.")
    return self._classes[name]

  def __contains__(self, name) -> bool:
    return name in self._classes

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._classes))

  def names(self) -> tuple[str, ...]:
    return tuple(sorted(self._classes))
