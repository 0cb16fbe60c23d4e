"""A tiny name → object registry: methods are data, not if/elif chains."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from tp_vgg.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. ``what`` names the kind of thing in error messages."""

    def __init__(self, what: str):
        self.what = what
        self._items: Dict[str, T] = {}
        self._help: Dict[str, str] = {}

    def register(self, name: str, item: T, help: str = "") -> T:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        self._help[name] = help
        return item

    def decorator(self, name: str, help: str = "") -> Callable[[T], T]:
        def wrap(item: T) -> T:
            return self.register(name, item, help)
        return wrap

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.what} {name!r}; accepted: {', '.join(self._items)}") from None

    def help(self, name: str) -> str:
        return self._help[name]

    def names(self) -> list:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
