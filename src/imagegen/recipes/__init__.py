"""The registry of recipes: every module's RECIPES, by name."""

from __future__ import annotations

from imagegen.errors import InvalidRequest
from imagegen.recipes import sdxl
from imagegen.recipes.base import Recipe

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (*sdxl.RECIPES,)}
DEFAULT_RECIPE = "sdxl-turbo"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InvalidRequest(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None
