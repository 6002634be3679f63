"""Checks a dataset card with Hugging Face's own readers, offline.

Usage: check_card.py OUT_DIR ROWS LANGUAGES SIZE_CATEGORY
  LANGUAGES: comma-separated lower-case codes, in card order.
The card must parse with huggingface_hub's DatasetCard, its metadata must match the dataset
(languages, size category, features against the Parquet file's columns, row count), and
datasets.load_dataset must read the data file the card's `configs` name, from the folder.
Prints one JSON line with what it found; exits non-zero on the first mismatch.
"""
import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from huggingface_hub import DatasetCard  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import datasets  # noqa: E402

out, rows, languages, size = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
card = DatasetCard.load(os.path.join(out, "README.md"))
data = card.data.to_dict()


def check(ok, what):
    if not ok:
        sys.exit(f"card mismatch: {what}\nmetadata: {json.dumps(data, indent=1)}")


check(data.get("language") == languages, f"language {data.get('language')} != {languages}")
check(data.get("size_categories") == [size], f"size_categories {data.get('size_categories')}")
check("text-classification" in data.get("task_categories", []), "task_categories")
config = data["configs"][0]
path = config["data_files"][0]["path"]
schema = pq.read_schema(os.path.join(out, path))
features = data["dataset_info"]["features"]
check([f["name"] for f in features] == schema.names, f"features {features} vs {schema.names}")
for feature, field in zip(features, schema):
    listed = "sequence" in feature or "list" in feature
    check(listed == str(field.type).startswith("list"), f"type of {feature['name']}: {field.type}")
check(data["dataset_info"]["splits"][0]["num_examples"] == rows, "num_examples")

loaded = datasets.load_dataset(out)
train = loaded["train"]
check(train.num_rows == rows, f"load_dataset read {train.num_rows} rows, not {rows}")
check(list(train.features) == schema.names, f"load_dataset columns {list(train.features)}")
check(card.text.strip().startswith("#"), "the card has a body")
print(json.dumps({"rows": train.num_rows, "path": path, "languages": data["language"],
                  "datasets": datasets.__version__}))
