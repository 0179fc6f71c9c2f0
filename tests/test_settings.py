from pathlib import Path

import pytest

from fedxai.settings import ExplainerSettings, SettingsError, StorageSettings


def test_local_folder_is_the_default():
    assert StorageSettings.from_env({}) == StorageSettings(s3=None, output_dir=Path("outputs"))
    assert StorageSettings.from_env({"FEDXAI_OUTPUT_DIR": "/data/x"}).output_dir == Path("/data/x")


def test_s3_settings_from_the_environment():
    settings = StorageSettings.from_env(
        {
            "FEDXAI_S3_ENDPOINT": "minio:9000",
            "FEDXAI_S3_ACCESS_KEY": "ak",
            "FEDXAI_S3_SECRET_KEY": "sk",
            "FEDXAI_S3_SECURE": "true",
            "FEDXAI_S3_PUBLIC_ENDPOINT": "localhost:9000",
        }
    )
    assert settings.s3 is not None
    assert (settings.s3.endpoint, settings.s3.bucket, settings.s3.secure) == ("minio:9000", "fedxai", True)
    assert settings.s3.public_endpoint == "localhost:9000"
    assert "sk" not in repr(settings.s3)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEDXAI_S3_ENDPOINT": "http://minio:9000"}, "without a scheme"),
        (
            {
                "FEDXAI_S3_ENDPOINT": "m:9000",
                "FEDXAI_S3_ACCESS_KEY": "a",
                "FEDXAI_S3_SECRET_KEY": "b",
                "FEDXAI_S3_BUCKET": "ab",
            },
            "FEDXAI_S3_BUCKET='ab' must be 3 to 63",
        ),
    ],
)
def test_bad_storage_settings_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        StorageSettings.from_env(env)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "localhost"}, "is not HOST:PORT"),
        ({"address": "localhost:http"}, "non-numeric port"),
        ({"address": "localhost:70000"}, "out of range"),
        ({"max_batch_size": 0}, "max_batch_size must be positive"),
        ({"cached_models": -1}, "cached_models must not be negative"),
    ],
)
def test_bad_explainer_settings_are_named(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        ExplainerSettings(**kwargs)
