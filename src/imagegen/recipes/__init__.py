"""The registry of recipes: every module's RECIPES, by name."""

from __future__ import annotations

from imagegen.errors import InvalidRequest
from imagegen.recipes import cascade, controlnet, dit, sd15, sdxl, video
from imagegen.recipes.base import Recipe

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for module in (dit, sdxl, sd15, cascade, controlnet, video)
    for recipe in module.RECIPES
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise InvalidRequest(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None

