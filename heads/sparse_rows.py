"""Sparse inputs for the torch heads' first layer on CPU (k-mer counts: ~9% non-zero).

A head sees its rows encoded as (x - mean) / std: dense, although x itself is mostly zeros.
Written as x / std - mean / std, the encoded rows are a sparse matrix X minus one dense row
`shift` repeated, and a first layer's products need only X:

    rows @ M  = X M - 1 (shift' M)                 (the forward, M = W')
    rows' @ G = X' G - shift (1' G)                (the weight's gradient, G = dz)

mlp2_ln's LayerNorm divides each encoded row r by its own spread after removing its own mean
a_r (statistics no parameter changes: heads.torch_mlp._trained_form), which scales and shifts
the same products row by row: with p_r = 1 / spread_r,

    rows @ M  = p * (X M - 1 (shift' M) - a (1' M))
    rows' @ G = X' (p G) - shift (1' p G) - 1 (a' p G)

On 14,339 x 5,460 k-mer rows a batch of 512 through a 256-unit first layer took 22 ms as dense
products (forward and weight gradient), 10 ms as sparse ones (MKL's CSR kernels), the sparse
batch and its transpose built from the stored CSR rows in 1 ms. Dense features (embeddings),
denser k-mer tables (long sequences) and CUDA keep the dense path.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse
import torch
from torch import nn

SPARSE_DENSITY = 0.2  # inputs with at most this share of non-zero values train on sparse products


def is_sparse_enough(X: np.ndarray) -> bool:
    return X.ndim == 2 and X.size > 0 and np.count_nonzero(X) <= SPARSE_DENSITY * X.size


class SparseRows:
    """Encoded rows (X - 1 shift'), optionally normalised per row (p * (... - a)), stored as
    CSR; `take` and slicing give the batches a first layer multiplies."""

    def __init__(self, csr: scipy.sparse.csr_matrix, shift: np.ndarray,
                 scale: np.ndarray | None = None, centre: np.ndarray | None = None):
        self.csr, self.shift = csr, torch.as_tensor(shift, dtype=torch.float32)
        self.scale = None if scale is None else torch.as_tensor(scale, dtype=torch.float32)
        self.centre = None if centre is None else torch.as_tensor(centre, dtype=torch.float32)
        self._slices: dict[tuple, SparseBatch] = {}  # validation slices, the same every epoch

    @classmethod
    def encode(cls, X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> "SparseRows":
        """The rows (X - mean) / std, from the raw rows X (zeros stay zeros)."""
        csr = scipy.sparse.csr_matrix(np.asarray(X, np.float32))
        csr.data /= np.asarray(std, np.float32)[csr.indices]
        return cls(csr, np.asarray(mean, np.float32) / np.asarray(std, np.float32))

    def __len__(self) -> int:
        return self.csr.shape[0]

    @property
    def width(self) -> int:
        return self.csr.shape[1]

    def normalised(self, eps: float) -> "SparseRows":
        """Each row less its mean, divided by sqrt(its variance + eps), as LayerNorm without
        its affine part; the statistics in float64 from the sparse rows."""
        d = self.width
        shift = self.shift.double().numpy()
        sums = np.asarray(self.csr.sum(axis=1), np.float64).ravel()
        squares = np.asarray(self.csr.multiply(self.csr).sum(axis=1), np.float64).ravel()
        cross = self.csr.astype(np.float64) @ shift
        mean = (sums - shift.sum()) / d
        mean_square = (squares - 2 * cross + shift @ shift) / d
        variance = np.maximum(mean_square - mean ** 2, 0.0)
        return SparseRows(self.csr, self.shift.numpy(), 1.0 / np.sqrt(variance + eps), mean)

    def take(self, index) -> "SparseBatch":
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        return SparseBatch(self.csr[index], self.shift,
                           None if self.scale is None else self.scale[index],
                           None if self.centre is None else self.centre[index])

    def __getitem__(self, where: slice) -> "SparseBatch":
        key = where.indices(len(self))
        if key not in self._slices:
            self._slices[key] = self.take(np.arange(*key))
        return self._slices[key]


def _torch_csr(matrix, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used are not
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr), torch.from_numpy(matrix.indices),
                                       torch.from_numpy(matrix.data), shape)


class SparseBatch:
    """A batch of SparseRows: its CSR rows and their transpose (for the weight's gradient)."""

    def __init__(self, csr, shift, scale=None, centre=None):
        n, d = csr.shape
        self.rows = _torch_csr(csr, (n, d))
        self.columns = _torch_csr(csr.tocsc(), (d, n))  # CSC of the batch = CSR of its transpose
        self.shift, self.scale, self.centre = shift, scale, centre

    def __len__(self) -> int:
        return self.rows.shape[0]

    def times(self, M: torch.Tensor) -> torch.Tensor:
        """rows @ M, M: (inputs, outputs), contiguous for MKL (see `transposed_layout`)."""
        out = (self.rows @ M).sub_(self.shift @ M)
        if self.scale is not None:
            out.sub_(self.centre[:, None] * M.sum(dim=0)).mul_(self.scale[:, None])
        return out

    def transposed_times(self, G: torch.Tensor) -> torch.Tensor:
        """rows' @ G, G: (batch, outputs)."""
        if self.scale is not None:
            G = G * self.scale[:, None]
        out = (self.columns @ G).addr_(self.shift, G.sum(dim=0), alpha=-1)
        if self.centre is not None:
            out.sub_((self.centre @ G)[None, :])
        return out


def transposed_layout(linear: nn.Linear) -> None:
    """Store a Linear's (outputs, inputs) weight column-major: W' is then contiguous, the
    layout MKL's sparse product takes (a row-major W cost a 5.6 MB transposing copy per
    product, a third of a step), and its gradient, made as (X' G) transposed, has the same
    layout, so no copy either. `contiguous_parameters` restores the usual layout."""
    with torch.no_grad():
        linear.weight = nn.Parameter(linear.weight.t().contiguous().t())


def contiguous_parameters(model: nn.Module) -> None:
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if not parameter.is_contiguous():
                setattr(module, name, nn.Parameter(parameter.detach().contiguous(),
                                                   requires_grad=parameter.requires_grad))


class _rows_times(torch.autograd.Function):
    """rows @ M with the gradient for M only (the rows are data)."""

    @staticmethod
    def forward(ctx, M, rows):
        ctx.rows = rows
        return rows.times(M)

    @staticmethod
    def backward(ctx, grad):
        return ctx.rows.transposed_times(grad), None


class _sparse_norm_linear(torch.autograd.Function):
    """z = rows (W diag(g))' + (W beta + b) on rows normalised already. With M = (rows' dz)'
    and s = the column sums of dz: dW = M diag(g) + s beta', dg = column sums of W * M,
    dbeta = W' s, db = s (heads.torch_mlp._norm_linear's gradients, the product sparse). One
    function instead of autograd's pieces: those added the weight's two gradient terms and
    copied them between layouts, ~30% of an mlp2_ln epoch on 5,460 k-mer columns."""

    @staticmethod
    def forward(ctx, gamma, beta, weight, bias, rows):
        ctx.rows = rows
        ctx.save_for_backward(gamma, beta, weight)
        return rows.times((weight * gamma).t()).add_(torch.addmv(bias, weight, beta))

    @staticmethod
    def backward(ctx, dz):
        gamma, beta, weight = ctx.saved_tensors
        s = dz.sum(dim=0)
        M = ctx.rows.transposed_times(dz).t()  # (outputs, inputs), in the weight's layout
        return (weight * M).sum(dim=0), weight.t() @ s, (M * gamma).addr_(s, beta), s, None


class SparseFirstLayer(nn.Module):
    """A network's first Linear (after its input LayerNorm, for mlp2_ln) on SparseBatch rows,
    with the same parameters: linear(rows) or linear(norm.weight * rows + norm.bias) on rows
    normalised already, computed as rows @ (W diag(gamma))' + (W beta + b)."""

    def __init__(self, linear: nn.Linear, norm: nn.LayerNorm | None = None):
        super().__init__()
        self.linear, self.norm = linear, norm

    def forward(self, rows: SparseBatch) -> torch.Tensor:
        weight, bias = self.linear.weight, self.linear.bias
        if self.norm is None:
            return _rows_times.apply(weight.t(), rows) + bias
        return _sparse_norm_linear.apply(self.norm.weight, self.norm.bias, weight, bias, rows)
