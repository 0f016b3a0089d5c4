"""What `plan` emits for GitHub Actions: a job matrix, or shards of it within GitHub's limit."""

from __future__ import annotations

import math
from typing import Any

from imagebuilder.clouds import registry
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell

# GitHub Actions expands one matrix into at most 256 jobs.
MATRIX_LIMIT = 256


def matrix_entry(cell: Cell) -> dict[str, str]:
    return {"id": cell.id, "cloud": cell.cloud, "os": cell.os, "kubernetes": cell.kubernetes, "arch": cell.arch,
            "strategy": cell.strategy, "build_key": cell.build_key}


def job_matrix(cells: list[Cell]) -> dict[str, Any]:
    """One matrix of the cells; refused when GitHub would not expand it."""
    if len(cells) > MATRIX_LIMIT:
        raise UserError(f"plan: {len(cells)} cells exceed GitHub's {MATRIX_LIMIT} jobs per matrix "
                        "| fix: use --format github-shards (a matrix of shards, each at most "
                        f"{MATRIX_LIMIT} cells) or narrow with --only")
    return {"include": [matrix_entry(cell) for cell in cells]}


def shards(cells: list[Cell], size: int = MATRIX_LIMIT) -> dict[str, Any]:
    """A matrix of shards, each carrying a matrix of at most ``size`` cells, split evenly."""
    count = math.ceil(len(cells) / size)
    if count > MATRIX_LIMIT:
        raise UserError(f"plan: {len(cells)} cells need {count} shards, more than GitHub's {MATRIX_LIMIT} "
                        "jobs per matrix | fix: narrow the run with --only")
    bounds = [round(index * len(cells) / count) for index in range(count + 1)] if count else [0]
    return {"include": [
        {"shard": f"{index + 1}/{count}",
         "cells": {"include": [matrix_entry(cell) for cell in cells[bounds[index]:bounds[index + 1]]]}}
        for index in range(count)
    ]}


def clouds_of(cells: list[Cell]) -> list[str]:
    """The clouds these cells live in, in the matrix's cloud order: the credentials a job needs."""
    present = {cell.cloud for cell in cells}
    return [cloud for cloud in registry.names() if cloud in present]
