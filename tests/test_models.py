"""What names a base model exactly, for comparing measurements: revision and chat template."""

from types import SimpleNamespace

from spectrain.models import base_model_identity, registered_model_name


def test_the_identity_changes_with_the_weights_and_the_chat_template_and_names_a_hub_commit(tmp_path):
    local = tmp_path / "model"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"weights, first version")
    (local / "chat_template.jinja").write_text("{{ messages }}")
    first = base_model_identity(str(local))
    assert first["base_model_revision"].startswith("sampled:") and first["chat_template_sha256"].startswith("sha256:")
    assert base_model_identity(str(local)) == first  # the same files, the same identity

    (local / "model.safetensors").write_bytes(b"weights, fine-tuned")
    retrained = base_model_identity(str(local))
    assert retrained["base_model_revision"] != first["base_model_revision"]
    assert retrained["chat_template_sha256"] == first["chat_template_sha256"]

    other_template = base_model_identity(str(local), SimpleNamespace(chat_template="{{ other }}"))
    assert other_template["chat_template_sha256"] != first["chat_template_sha256"]

    snapshot = tmp_path / "models--org--name" / "snapshots" / ("c0ffee" + "0" * 34)
    snapshot.mkdir(parents=True)
    assert base_model_identity(str(snapshot))["base_model_revision"] == "hub:c0ffee" + "0" * 34
    assert base_model_identity(str(snapshot))["chat_template_sha256"] == ""  # none: recorded as absent


def test_each_mode_has_its_own_registered_model_with_or_without_a_prefix():
    assert registered_model_name("team-drafts", "embedded", "eagle3") == "team-drafts-eagle3"
    assert registered_model_name("team-drafts", "embedded", "medusa") == "team-drafts-medusa"
    assert registered_model_name("", "embedded", "dflash") == "spectrain-smollm2-135m-instruct-dflash"
