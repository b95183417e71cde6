"""The pipeline's last task: the run's summary table as a Markdown artifact."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from spectrain import images


@dsl.component(base_image=images.ORCHESTRATE, install_kfp_package=False)
def summarize(register_results: Input[List[Artifact]], summary: Output[Markdown]):
    """Write the run's summary table (shown in the KFP UI; `spectrain run` prints it)."""
    import json

    from spectrain.summary import summary_table

    results = [json.load(open(artifact.path)) for artifact in register_results]
    with open(summary.path, "w") as handle:
        handle.write(summary_table(sorted(results, key=lambda r: r["mode"])))
