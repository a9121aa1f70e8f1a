/* The CPU launchers' per-step host work in one call: check every tensor of a bucket and
 * write the table of pointers and sizes the kernels read.
 *
 * In Python this read every tensor's data pointer and size through one call each (about
 * 1.5 ms a step for a thousand parameters and their five state tensors), and checked the
 * shapes, devices and dtypes only when a pointer or a size changed (adan._checks.LayoutCache).
 * Here every check runs at every step, at a few nanoseconds a tensor.
 *
 * It checks, and refuses (returns False, having promised nothing) unless all of these hold:
 * every object is a plain tensor (torch.Tensor or Parameter, no subclass) on the CPU,
 * strided, contiguous, with storage and without the lazy negation or conjugation bits; the
 * parameters share one dtype, and each gradient has its parameter's dtype and number of
 * elements; each buffer list (m, v, n, the previous gradient, the Kahan compensation) and
 * each scale list shares one dtype; every buffer has its parameter's shape, every int8
 * scale the shape (rows, ceil(cols / block)) of its parameter's block layout, every step
 * count one element. The caller checks each list's first dtype (one check per list). Where
 * it refuses, the launcher takes the Python path (adan._checks), which raises the error
 * that names the problem, or converts what it converts (a gradient of another dtype).
 *
 * The table, n int64 entries per run: the parameters' pointers, the gradients', each
 * buffer list's, each scale list's, the step counts'; then the parameters' numel, the
 * rows and the cols of their block layouts (adan._compact.block_layout).
 *
 * Built at first use against the installed torch (adan._native.load_extension). */
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <exception>

namespace {

/* The tensor of a plain, strided, contiguous CPU tensor object, else nullptr. */
const at::Tensor* plain(PyObject* obj) {
  if (!THPVariable_CheckExact(obj)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(obj);
  if (!t.defined() || !t.is_cpu() || t.layout() != at::kStrided || !t.has_storage() || !t.is_contiguous() ||
      t.is_neg() || t.is_conj())
    return nullptr;
  return &t;
}

struct Sequence {  // a list or tuple, borrowed
  PyObject** items;
  Py_ssize_t size;
};

bool as_sequence(PyObject* obj, Sequence* seq) {
  if (PyList_Check(obj)) {
    *seq = {PySequence_Fast_ITEMS(obj), PyList_GET_SIZE(obj)};
    return true;
  }
  if (PyTuple_Check(obj)) {
    *seq = {PySequence_Fast_ITEMS(obj), PyTuple_GET_SIZE(obj)};
    return true;
  }
  return false;
}

constexpr int kMaxLists = 16;

/* One list of tensors of one dtype, each passing `fits`; writes the pointers to `out`. */
template <class Fits>
bool pointers(const Sequence& list, int64_t* out, Fits fits) {
  const at::Tensor* first = list.size ? plain(list.items[0]) : nullptr;
  if (first == nullptr) return false;
  const auto dtype = first->scalar_type();
  for (Py_ssize_t i = 0; i < list.size; ++i) {
    const at::Tensor* t = plain(list.items[i]);
    if (t == nullptr || t->scalar_type() != dtype || !fits(i, *t)) return false;
    out[i] = reinterpret_cast<int64_t>(t->data_ptr());
  }
  return true;
}

bool fill(const Sequence& params, const Sequence& grads, const Sequence* buffers, int n_buffers,
          const Sequence* scales, int n_scales, const Sequence& steps, int64_t block, int64_t* out) {
  const Py_ssize_t n = params.size;
  if (n == 0 || grads.size != n || steps.size != n || block <= 0) return false;
  for (int k = 0; k < n_buffers; ++k)
    if (buffers[k].size != n) return false;
  for (int k = 0; k < n_scales; ++k)
    if (scales[k].size != n) return false;
  int64_t* numels = out + (3 + n_buffers + n_scales) * n;
  int64_t* rows = numels + n;
  int64_t* cols = rows + n;
  const at::Tensor* first = plain(params.items[0]);
  if (first == nullptr) return false;
  const auto dtype = first->scalar_type();
  for (Py_ssize_t i = 0; i < n; ++i) {
    const at::Tensor* p = plain(params.items[i]);
    if (p == nullptr || p->scalar_type() != dtype) return false;
    out[i] = reinterpret_cast<int64_t>(p->data_ptr());
    numels[i] = p->numel();
    const auto shape = p->sizes();  // (block_layout: a tensor of two or more dims as rows x the rest)
    rows[i] = shape.size() >= 2 ? shape[0] : 1;
    cols[i] = shape.size() == 1 ? shape[0] : 1;
    for (size_t d = 1; shape.size() >= 2 && d < shape.size(); ++d) cols[i] *= shape[d];
  }
  const auto same_numel = [&](Py_ssize_t i, const at::Tensor& t) {
    return t.numel() == numels[i] && t.scalar_type() == dtype;
  };
  if (!pointers(grads, out + n, same_numel)) return false;
  for (int k = 0; k < n_buffers; ++k) {
    const auto same_shape = [&](Py_ssize_t i, const at::Tensor& t) {
      return t.sizes() == THPVariable_Unpack(params.items[i]).sizes();
    };
    if (!pointers(buffers[k], out + (2 + k) * n, same_shape)) return false;
  }
  for (int k = 0; k < n_scales; ++k) {
    const auto scale_shape = [&](Py_ssize_t i, const at::Tensor& t) {
      return t.dim() == 2 && t.size(0) == rows[i] && t.size(1) == (cols[i] + block - 1) / block;
    };
    if (!pointers(scales[k], out + (2 + n_buffers + k) * n, scale_shape)) return false;
  }
  const auto one = [](Py_ssize_t, const at::Tensor& t) { return t.numel() == 1; };
  return pointers(steps, out + (2 + n_buffers + n_scales) * n, one);
}

const char kPackDoc[] =
    "pack(params, grads, buffers, scales, steps, block, out) -> bool\n\n"
    "Check one bucket's tensors (lists; buffers and scales tuples of lists) and write its table\n"
    "to the int64 memory at address `out`, (6 + len(buffers) + len(scales)) * len(params)\n"
    "entries; False, and nothing promised, where any check fails.";

PyObject* pack(PyObject*, PyObject* args) {
  PyObject *params_obj, *grads_obj, *buffers_obj, *scales_obj, *steps_obj;
  long long block;
  unsigned long long address;
  if (!PyArg_ParseTuple(args, "OOO!O!OLK:pack", &params_obj, &grads_obj, &PyTuple_Type, &buffers_obj, &PyTuple_Type,
                        &scales_obj, &steps_obj, &block, &address))
    return nullptr;
  Sequence params, grads, steps, buffers[kMaxLists], scales[kMaxLists];
  const Py_ssize_t n_buffers = PyTuple_GET_SIZE(buffers_obj), n_scales = PyTuple_GET_SIZE(scales_obj);
  bool ok = address != 0 && n_buffers + n_scales <= kMaxLists && as_sequence(params_obj, &params) &&
            as_sequence(grads_obj, &grads) && as_sequence(steps_obj, &steps);
  for (Py_ssize_t k = 0; ok && k < n_buffers; ++k) ok = as_sequence(PyTuple_GET_ITEM(buffers_obj, k), &buffers[k]);
  for (Py_ssize_t k = 0; ok && k < n_scales; ++k) ok = as_sequence(PyTuple_GET_ITEM(scales_obj, k), &scales[k]);
  try {
    ok = ok && fill(params, grads, buffers, static_cast<int>(n_buffers), scales, static_cast<int>(n_scales), steps,
                    block, reinterpret_cast<int64_t*>(address));
  } catch (const std::exception&) {  // (a tensor whose accessors throw: the Python path reports it)
    ok = false;
  }
  return PyBool_FromLong(ok);
}

PyMethodDef kMethods[] = {{"pack", pack, METH_VARARGS, kPackDoc}, {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_adan_host", "The CPU launchers' per-step host work (adan_host.cpp).",
                       -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__adan_host(void) { return PyModule_Create(&kModule); }
