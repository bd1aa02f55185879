"""The crops of a whole data.decode=gpu batch in a few batched kernels, on the GPU or the CPU.

The workers choose each crop in the coordinates of the image as decoded (transforms.CropWindow);
here every output pixel is computed straight from those source pixels with the weights the CPU
view uses: torchvision's antialiased bilinear resize (a triangle filter widened by the shrink
factor) followed by the crop and the flip. Resizing the whole image first is never needed.

The filter is separable, so the crops of n images are two batched matrix products:
(n, crop, Hr) row weights @ (n, Hr, 3 * Wr) source region @ (n, Wr, crop) column weights, where
the region is the part of each image the filter reaches, padded to the largest of its group.
Images whose regions differ much in size go in separate groups (a few per batch at most), so that
one large photo does not pad a whole batch. A few dozen kernels a group, however many images.
The arithmetic is dense (most weights are zero) but runs on tensor cores: a fraction of a
millisecond for 128 crops on a current GPU, where a Python loop of resize, crop and flip per image
launched hundreds of kernels.
"""

from collections.abc import Sequence

import numpy as np
import torch

# Padding allowed in a group of regions, as a fraction of their own pixels: more groups cost
# kernel launches, more padding costs arithmetic on zeros.
GROUP_PADDING = 0.3
# Columns of a group's parameters, sent to the device as one tensor.
START, HEIGHT, WIDTH, Y0, X0, TOP, LEFT, STEP_Y, STEP_X, FLIP = range(10)


def source_regions(windows: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(n, 4) int: first row, row count, first column, column count of the source pixels each
    window's filter reaches (torchvision's tap range: centre +- support, rounded), clamped to the
    image. windows: (n, 6) as CropWindow (top, left, step_y, step_x, flip, size)."""
    top, left, step_y, step_x, size = (windows[:, k] for k in (0, 1, 2, 3, 5))

    def span(start, step, limit):
        support = np.maximum(step, 1.0)
        first = np.floor(start + 0.5 * step - support + 0.5)
        end = np.floor(start + (size - 0.5) * step + support + 0.5)
        first = np.clip(first, 0, limit - 1)
        return first, np.clip(end, first + 1, limit) - first

    y0, rows = span(top, step_y, heights)
    x0, columns = span(left, step_x, widths)
    return np.stack([y0, rows, x0, columns], axis=1).astype(np.int64)


def groups_of_similar_size(rows: np.ndarray, columns: np.ndarray) -> list[np.ndarray]:
    """Indices of images whose regions pad to a common size with little waste, smallest first."""
    order = np.argsort(rows * columns, kind="stable")  # then each group back in batch order
    groups, current, max_rows, max_columns, pixels = [], [], 0, 0, 0
    for i in order:
        rows_i, columns_i = int(rows[i]), int(columns[i])
        grown_rows, grown_columns = max(max_rows, rows_i), max(max_columns, columns_i)
        padded = (len(current) + 1) * grown_rows * grown_columns
        if current and padded > (1 + GROUP_PADDING) * (pixels + rows_i * columns_i):
            groups.append(np.sort(current))
            current, grown_rows, grown_columns, pixels = [], rows_i, columns_i, 0
        current.append(i)
        max_rows, max_columns, pixels = grown_rows, grown_columns, pixels + rows_i * columns_i
    groups.append(np.sort(current))
    return groups


def filter_weights(
    first: torch.Tensor, count: int, limit: torch.Tensor, centres: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    """(n, crop, count) float32 weights of source pixels first .. first + count - 1 (first, limit:
    (n,) int) for output pixels centred on `centres` ((n, crop) float64): torchvision's antialiased
    bilinear (aten's upsample_bilinear2d_aa: a triangle of half-width max(step, 1); pixels at or
    past `limit`, the image's edge, left out; normalised to sum 1). All zero for an output outside
    the image (the centre crop's black padding)."""
    offsets = torch.arange(count, device=first.device, dtype=torch.float32)
    # Source pixel k's centre minus the output's centre, in float64 where the values are large.
    nearest = (first[:, None] + 0.5 - centres).float()  # (n, crop)
    support = step.clamp(min=1).float()[:, None, None]
    distance = (offsets + nearest[:, :, None]) / support
    inside = (first[:, None] + torch.arange(count, device=first.device)) < limit[:, None]
    weights = (1 - distance.abs()).clamp_(min=0) * inside[:, None, :]
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, 1)


def crop_group(
    by_row_start: torch.Tensor,
    params: torch.Tensor,
    rows: int,
    columns: int,
    size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The (n, 3, size, size) crops of one group (params: (n, 10) on the device; rows, columns:
    its padded region) from the images in `by_row_start` (see crop_batch), computed in `dtype`."""
    n, device = len(params), params.device
    whole = params.long()
    start, height, width = whole[:, START], whole[:, HEIGHT], whole[:, WIDTH]
    y0, x0 = whole[:, Y0], whole[:, X0]
    # The region, (n, rows, 3, columns): rows past an image's end repeat its last row, and get no
    # weight below. Indexing with two broadcast index tensors reads it without an index per pixel.
    source_rows = torch.minimum(
        y0[:, None] + torch.arange(rows, device=device), height[:, None] - 1
    )
    channel = torch.arange(3, device=device)[None, None, :] * (height * width)[:, None, None]
    row_starts = start[:, None, None] + channel + (source_rows * width[:, None])[:, :, None]
    source_columns = torch.minimum(
        x0[:, None] + torch.arange(columns, device=device), width[:, None] - 1
    )
    region = by_row_start[row_starts[..., None], source_columns[:, None, None, :]].to(dtype)

    outputs = torch.arange(size, device=device, dtype=torch.float64)
    flip = params[:, FLIP, None] > 0
    mirrored = torch.where(flip, size - 1 - outputs, outputs)  # column j shows column size-1-j
    step_y, step_x = params[:, STEP_Y], params[:, STEP_X]
    centres_y = params[:, TOP, None] + (outputs + 0.5) * step_y[:, None]
    centres_x = params[:, LEFT, None] + (mirrored + 0.5) * step_x[:, None]
    row_weights = filter_weights(y0, rows, height, centres_y, step_y).to(dtype)
    column_weights = filter_weights(x0, columns, width, centres_x, step_x).to(dtype)

    across = region.view(n, rows * 3, columns) @ column_weights.transpose(1, 2)  # (n, rows*3, size)
    down = row_weights @ across.view(n, rows, 3 * size)  # (n, size, 3 * size)
    return down.round_().clamp_(0, 255).view(n, size, 3, size).permute(0, 2, 1, 3)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on `device` without making the host wait: a copy from pageable memory
    waits for the stream's earlier work (here nvjpeg's); from pinned memory it is queued."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def crop_batch(
    images: Sequence[torch.Tensor], windows: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The crops of decoded images (each uint8 (3, H, W), all on one device) by their windows
    ((n, 6) float, CropWindow's fields, on the CPU): (n, 3, size, size) uint8, channels-last like
    the CPU decoder's batches.

    dtype of the arithmetic, by default float16 on a GPU (exact for 0..255; the products run on
    tensor cores with float32 accumulation, within a tenth of a level of float32's result) and
    float32 on a CPU (where float16 is slow)."""
    device, n = images[0].device, len(images)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    size = int(windows[0, 5])
    heights = np.array([image.shape[-2] for image in images], dtype=np.int64)
    widths = np.array([image.shape[-1] for image in images], dtype=np.int64)
    regions = source_regions(windows.numpy(), heights, widths)
    starts = np.concatenate([[0], np.cumsum(3 * heights * widths)[:-1]])

    # One buffer for all images, then a view of it in which row p, column q is element p + q: a
    # pixel is its row's start plus its column. The zeros keep the view inside the buffer.
    pad = int(widths.max())
    flat = torch.cat([image.reshape(-1) for image in images] + [images[0].new_zeros(pad)])
    by_row_start = flat.as_strided((flat.numel() - pad, pad), (1, 1))

    parameters = np.zeros((n, 10))
    parameters[:, [START, HEIGHT, WIDTH]] = np.stack([starts, heights, widths], axis=1)
    parameters[:, [Y0, X0]] = regions[:, [0, 2]]
    parameters[:, [TOP, LEFT, STEP_Y, STEP_X, FLIP]] = windows.numpy()[:, :5]
    parameters = to_device(parameters, device)

    out = torch.empty((n, 3, size, size), dtype=torch.uint8, device=device)
    out = out.contiguous(memory_format=torch.channels_last)
    for group in groups_of_similar_size(regions[:, 1], regions[:, 3]):
        rows, columns = int(regions[group, 1].max()), int(regions[group, 3].max())
        index = to_device(group, device)
        crops = crop_group(by_row_start, parameters[index], rows, columns, size, dtype)
        if len(group) == n:
            out.copy_(crops)  # one group in batch order, the usual case: no index_copy
        else:
            out.index_copy_(0, index, crops.to(torch.uint8))
    return out
