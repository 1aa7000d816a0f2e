import hashlib
import io

from PIL import Image, ImageDraw


def handler(event, context):
    image = Image.new("RGB", (event["width"], event["height"]), (20, 40, 60))
    draw = ImageDraw.Draw(image)
    for i in range(0, event["width"], 16):
        draw.line((i, 0, event["width"] - i, event["height"]), fill=(i % 256, 128, 255 - i % 256), width=3)
    image.thumbnail((128, 128))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return {"size": image.size, "png sha256": hashlib.sha256(out.getvalue()).hexdigest()}
