import subprocess
import sys

HEAVY = ["torch", "sentence_transformers", "datasets", "optuna", "modal", "transformers"]


def test_import_embedft_is_light():
    code = f"import sys, embedft\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\nprint(','.join(heavy))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import embedft pulled in: {out.stdout.strip()}"


def test_public_api_is_exported():
    import embedft

    for name in ["DatasetBuilder", "Trainer", "RunConfig", "DataConfig", "ModelConfig", "TrainingConfig", "TASKS", "get_task", "EmbedftError"]:
        assert name in embedft.__all__
        assert getattr(embedft, name) is not None
    assert "pair-classification" in embedft.TASKS
