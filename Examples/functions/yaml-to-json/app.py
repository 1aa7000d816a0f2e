import json

import yaml


def handler(event, context):
    return json.dumps(yaml.safe_load(event["yaml"]), sort_keys=True)
