import logging

import pytest
import yaml

# the sims cap max_model_len to their tiny test caches, and say so
logging.getLogger("vllm_sim").setLevel(logging.ERROR)


def write_scenario(path, **over):
    """A small shared-prefix scenario: 2 pods, 3 engine seconds at 20 req/s."""
    doc = {"name": "tiny", "pool": {"count": 2, "time_scale": 1.0, "gpu_blocks": 400},
           "routers": ["epp-approx"],
           "workload": {"type": "shared_prefix", "groups": 4, "prompts_per_group": 3, "system_len": 200,
                        "question_len": 40, "output_len": 8},
           "load": {"mode": "poisson", "rates": [20], "duration_s": 3, "drain_timeout_s": 20}}
    for k, v in over.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) and isinstance(doc.get(k), dict) else v
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    return write_scenario(tmp_path / "tiny.yaml")
