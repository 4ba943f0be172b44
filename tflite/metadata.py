"""TFLite Model Metadata for an image classifier, so MediaPipe's ImageClassifier loads it as is and an app on
LiteRT's CompiledModel can read what to feed.

Why not `tflite-support`'s or MediaPipe's `metadata_writers`: tflite-support 0.4.4 requires
`protobuf<4` (TensorFlow 2.21 needs protobuf >= 5) and its native modules link the system libusb;
MediaPipe's writers do not import in 1.2.x (`mediapipe.tasks.cc.metadata.python` is missing from the
wheels). The metadata itself is a flatbuffer (`metadata_schema.fbs`, identifier "M001") stored as a
model buffer named "TFLITE_METADATA", with associated files (the label file) appended to the model as a
zip archive. MediaPipe's wheel ships the flatc-generated Python code for both schemas, so this module
builds the same bytes that `MetadataPopulator` writes, with those generated classes and no native code.

The minimum parser version is "1.0.0": every field used here (image/feature properties, normalization
options, stats, TENSOR_AXIS_LABELS files without a `version`) exists since schema 1.0.0.
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np

METADATA_FIELD_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
MODEL_FILE_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"


def _schemas():
    """The flatc-generated Python classes for metadata_schema.fbs and the TFLite schema."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
        from mediapipe.tasks.metadata import schema_py_generated as model_fb
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "writing TFLite metadata needs mediapipe's generated schema code: pip install 'keras_cmt[tflite]'"
        ) from e
    return meta_fb, model_fb


def _is_per_channel(values) -> bool:
    return len(values) > 1 and len(set(float(v) for v in values)) > 1


def build_image_classifier_metadata(
    *,
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,
    num_classes: int,
    label_file: str,
    mean,
    std,
    input_min: float,
    input_max: float,
    output_is_probability: bool,
) -> bytes:
    """The metadata flatbuffer ("M001") for a one-input, one-output image classifier."""
    meta_fb, _ = _schemas()

    image = meta_fb.TensorMetadataT()
    image.name = "image"
    image.description = f"RGB image; the model normalises it as (x - {list(mean)}) / {list(std)}."
    image.content = meta_fb.ContentT()
    image.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    image.content.contentProperties = meta_fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = meta_fb.ColorSpaceType.RGB
    normalization = meta_fb.ProcessUnitT()
    normalization.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = meta_fb.NormalizationOptionsT()
    normalization.options.mean = [float(m) for m in mean]
    normalization.options.std = [float(s) for s in std]
    image.processUnits = [normalization]
    image.stats = meta_fb.StatsT()
    image.stats.max = [float(input_max)]
    image.stats.min = [float(input_min)]

    scores = meta_fb.TensorMetadataT()
    scores.name = "probability" if output_is_probability else "logits"
    scores.description = f"{'Probabilities' if output_is_probability else 'Logits'} of the {num_classes} labels."
    scores.content = meta_fb.ContentT()
    scores.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = meta_fb.FeaturePropertiesT()
    if output_is_probability:
        scores.stats = meta_fb.StatsT()
        scores.stats.max = [1.0]
        scores.stats.min = [0.0]
    labels = meta_fb.AssociatedFileT()
    labels.name = label_file
    labels.description = "Labels for the categories that the model recognises."
    labels.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [labels]

    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]

    model = meta_fb.ModelMetadataT()
    model.name = name
    model.description = description
    model.version = version
    model.author = author
    model.license = license
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def model_metadata_buffer(model_bytes: bytes, name: str):
    """The bytes of the model's metadata entry `name` (the flatbuffer's `Model.metadata`), or None."""
    _, model_fb = _schemas()
    model = model_fb.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() is not None and entry.Name().decode() == name:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def set_model_metadata_buffer(model_bytes: bytes, name: str, data: bytes) -> bytes:
    """The model flatbuffer re-serialised with its metadata entry `name` holding `data` (replaced in place, or
    added). Anything appended behind the flatbuffer (an associated-files zip) is not carried over."""
    _, model_fb = _schemas()
    model = model_fb.ModelT.InitFromObj(model_fb.Model.GetRootAsModel(model_bytes, 0))
    buffer = model_fb.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers = model.buffers or []
    model.metadata = model.metadata or []
    for entry in model.metadata:
        entry_name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if entry_name == name:
            model.buffers[entry.buffer] = buffer
            break
    else:
        model.buffers.append(buffer)
        entry = model_fb.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(len(model_bytes) + len(data) + 1024)
    builder.Finish(model.Pack(builder), MODEL_FILE_IDENTIFIER)
    return bytes(builder.Output())


def populate(model_bytes: bytes, metadata: bytes, associated_files: dict) -> bytes:
    """Returns the model with `metadata` in its "TFLITE_METADATA" buffer and the files zipped behind it.

    Mirrors `MetadataPopulator.populate()`: existing metadata of that name is replaced, the model
    flatbuffer is re-serialised, and the associated files are appended as a zip archive (a reader
    finds the archive from the end of the file, the interpreter ignores the trailing bytes).
    """
    model_bytes = bytes(model_bytes)
    if model_bytes[4:8] != MODEL_FILE_IDENTIFIER:
        raise ValueError("not a TFLite flatbuffer (file identifier is not 'TFL3')")
    out = io.BytesIO()
    out.write(set_model_metadata_buffer(model_bytes, METADATA_FIELD_NAME, metadata))
    with zipfile.ZipFile(out, "a") as archive:
        for file_name, content in associated_files.items():
            archive.writestr(file_name, content)
    return out.getvalue()


def read_metadata(model_bytes: bytes):
    """The `ModelMetadataT` object stored in a model, or None when it carries no metadata."""
    meta_fb, _ = _schemas()
    data = model_metadata_buffer(model_bytes, METADATA_FIELD_NAME)
    if data is None:
        return None
    if data[4:8] != METADATA_FILE_IDENTIFIER:
        raise ValueError("TFLITE_METADATA buffer without the 'M001' identifier")
    return meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAsModelMetadata(data, 0))


def read_associated_file(model_bytes: bytes, file_name: str) -> bytes:
    """An associated file packed behind the model (e.g. the label file)."""
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
        return archive.read(file_name)


def labels_text(labels) -> bytes:
    """The TENSOR_AXIS_LABELS file: one label per line, in output order."""
    labels = [str(label) for label in labels]
    for label in labels:
        if "\n" in label or "\r" in label:
            raise ValueError(f"label {label!r} contains a line break")
    return ("\n".join(labels) + "\n").encode("utf-8")


def normalization_for_metadata(input_range: str, mean, std):
    """(mean, std, min, max) to declare for the model's input.

    With the normalisation folded into the graph the app feeds RGB in [0, 255] (mean 0, std 1) or
    [0, 1] (mean 0, std 255); MediaPipe accepts only one mean/std for all channels. Without it
    (input_range "normalized") the per-channel ImageNet values are declared, for an app that normalises
    itself; MediaPipe refuses them ("Per-channel image normalization is not available").
    """
    if input_range == "0-255":
        return [0.0], [1.0], 0.0, 255.0
    if input_range == "0-1":
        return [0.0], [255.0], 0.0, 1.0
    if input_range == "normalized":
        m = [255.0 * float(v) for v in mean]
        s = [255.0 * float(v) for v in std]
        return m, s, float(min(-mi / si for mi, si in zip(m, s))), float(max((255.0 - mi) / si for mi, si in zip(m, s)))
    raise ValueError(f"unknown input range {input_range!r}: expected one of '0-255', '0-1', 'normalized'")


def mediapipe_compatible(mean, std) -> bool:
    return not (_is_per_channel(mean) or _is_per_channel(std))
