import hashlib
import io
import tarfile
import zlib


def handler(event, context):
    data = bytes((i * 7919) % 251 for i in range(event["size"]))
    packed = zlib.compress(data, 6)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return {"zlib": len(packed), "tar sha256": hashlib.sha256(archive.getvalue()).hexdigest(),
            "round trip": zlib.decompress(packed) == data}
