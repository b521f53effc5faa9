// Gathers the small linear systems of a chunk of rows out of one shared matrix: out[r, i, j] = source[idx[r, i],
// idx[r, j]] for i, j < sizes[r], and the identity beyond a row's size (padding that leaves the solution unchanged).
//
// ATen's advanced indexing does this as a general two-index gather and costs as much as the Cholesky factorization
// that follows (0.8 s for 32 systems of 1479 unknowns on 2 cores); these kernels copy row by row instead. The CPU
// kernel (gather_systems_cpu.cpp) is the reference; the CUDA twin (gather_systems_cuda.cu) is checked against it.
#pragma once

#include <ATen/core/Tensor.h>

namespace optima::solve_detail {

// source [n, n] fp32 or fp64, contiguous; idx [b, m] int64 with entries in [0, n) (entries at or past a row's size
// are ignored); sizes [b] int64 in [0, m], or undefined when every row has m unknowns. All on one device. Returns a
// contiguous [b, m, m] tensor of source's dtype on that device. Only the lower triangle (j <= i) is written when
// `lower_only` is true (Cholesky reads no more); the upper triangle then holds whatever was there.
//
// `workspace`, when given, is reused for the result if it is a 1-D tensor of the right dtype and device with at
// least b·m·m elements, and is replaced by a new one otherwise: chunk after chunk the same memory then serves, which
// matters on the CPU, where a fresh allocation of this size is mapped page by page on first touch (measured at
// 1.3 GB/s here, against 24 GB/s for memory already mapped).
at::Tensor gather_systems(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                          at::Tensor* workspace = nullptr);

// The two implementations behind gather_systems (inputs checked, `out` [b, m, m] contiguous).
void gather_systems_cpu(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                        at::Tensor& out);
void gather_systems_cuda(const at::Tensor& source, const at::Tensor& idx, const at::Tensor& sizes, bool lower_only,
                         at::Tensor& out);

}  // namespace optima::solve_detail
