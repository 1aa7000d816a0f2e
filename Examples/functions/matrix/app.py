import numpy


def handler(event, context):
    n = event["n"]
    a = numpy.arange(n * n, dtype=numpy.float64).reshape(n, n) / n
    b = numpy.linalg.inv(numpy.eye(n) * 3 + 0.01)
    spectrum = numpy.fft.rfft(numpy.sin(numpy.arange(1024) / 7.0))
    return {"product": round(float((a @ b).sum()), 6), "fft peak": int(numpy.argmax(numpy.abs(spectrum)))}
