"""Studies: multi-phase analyses behind the experiment scripts, as library functions returning typed results.

- `vitmech.studies.alignment`: does fine-tuning move attention onto annotated features (docs/alignment.md).
"""
