"""The alignment study's maps read the model's readout query: the class token's row, or the mean patch-query
row for a model that reads its patch tokens (pool "avg", "flatten", "rowcol"); rollout included.

Reference: the full rollout matrix R (every query row) from `rollout`, averaged over the patch rows by hand.
"""

import pytest
import torch

from tests.helpers.models import seeded_images, tiny_model
from vitmech.analysis.attention import collect_patterns
from vitmech.analysis.rollout import rollout
from vitmech.studies.alignment import attention_maps
from vitmech.tokens import token_layout


@pytest.mark.parametrize("pool", ["cls", "rowcol"])
def test_rollout_map_reads_the_readout_query(pool):
    model = tiny_model(seed=3, pool=pool)
    images = seeded_images(3, 32, seed=4)
    layout = token_layout(model)
    full = rollout(collect_patterns(model, images, progress=False), layout=layout)  # every query row of R
    rows = full.rows  # [batch, query, key]
    query = rows[:, layout.class_index] if pool == "cls" else layout.patches(rows, 1).mean(1)
    patch_map = layout.patches(query, -1)
    expected = (patch_map / patch_map.sum(-1, keepdim=True)).reshape(3, *layout.grid)

    maps = attention_maps(model, images, batch_size=2)
    torch.testing.assert_close(maps["rollout"], expected, rtol=1e-5, atol=1e-6)
    if pool == "rowcol":  # not the class token's row
        class_row = layout.patches(rows[:, layout.class_index], -1)
        assert not torch.allclose(maps["rollout"].flatten(1), class_row / class_row.sum(-1, keepdim=True), atol=1e-4)
