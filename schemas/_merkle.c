/*
 * schemas._merkle: the batch signature scheme's hashing (docs/protocol.md) in C.
 *
 * `forest` is `schemas.signing._forest_py` in one call: the same trees, the same root
 * messages, the same `retention-proof` header values, byte for byte (tests/test_signing_native.py
 * compares them over random inputs). The pure-Python code stays the reference and the
 * fallback: this module is built only where a compiler and OpenSSL's headers are present
 * (setup.py, `optional`), and `schemas.signing` says which one runs (`HASHING`).
 *
 * What it saves is Python's cost around each SHA-256 (a call, a bytes object, the
 * concatenations), not the hashing: OpenSSL's SHA-256 does the work either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The low-level SHA-256 calls are deprecated in OpenSSL 3 in favour of EVP, but are still
 * shipped and are the cheapest way to hash many small inputs: EVP adds a context dispatch
 * per digest (~20 ns of a 65-byte node's ~85 ns). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <string.h>

#define DIGEST 32
#define STEP 33     /* side byte + sibling hash */
#define STEP_B64 44 /* base64 of one step: 33 bytes, no padding */

static const char RECORD_CONTEXT[] = "retention-sig-v1";  /* + its NUL: 17 bytes */
#define RECORD_CONTEXT_LEN 17
static const char ROOT_CONTEXT[] = "retention-root-v1";   /* + its NUL: 18 bytes */
#define ROOT_CONTEXT_LEN 18
static const unsigned char LEAF = 0x00, NODE = 0x01;
static const unsigned char SIDE_LEFT = 0x00, SIDE_RIGHT = 0x01;

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 of one 33-byte step into 44 characters (33 is a multiple of 3). */
static void
step_b64(unsigned char side, const unsigned char *hash, char *out)
{
    unsigned char step[STEP];
    step[0] = side;
    memcpy(step + 1, hash, DIGEST);
    for (int i = 0; i < STEP; i += 3) {
        unsigned int v = (unsigned int)step[i] << 16 | (unsigned int)step[i + 1] << 8 | step[i + 2];
        *out++ = B64[v >> 18];
        *out++ = B64[(v >> 12) & 63];
        *out++ = B64[(v >> 6) & 63];
        *out++ = B64[v & 63];
    }
}

/* A record's key or value as bytes: None is empty, anything else must be bytes (what the
 * Python code concatenates). */
static int
as_bytes(PyObject *item, const char **data, Py_ssize_t *size)
{
    if (item == Py_None) {
        *data = "";
        *size = 0;
        return 0;
    }
    if (!PyBytes_Check(item)) {
        PyErr_Format(PyExc_TypeError, "a record's key and value are bytes or None, not %.100s",
                     Py_TYPE(item)->tp_name);
        return -1;
    }
    *data = PyBytes_AS_STRING(item);
    *size = PyBytes_GET_SIZE(item);
    return 0;
}

static int
length_prefix(Py_ssize_t size, unsigned char out[4])
{
    if ((unsigned long long)size > 0xFFFFFFFFULL) {
        PyErr_SetString(PyExc_OverflowError, "a record key longer than 2**32 - 1 bytes");
        return -1;
    }
    out[0] = (unsigned char)(size >> 24);
    out[1] = (unsigned char)(size >> 16);
    out[2] = (unsigned char)(size >> 8);
    out[3] = (unsigned char)size;
    return 0;
}

/* signed_bytes(key, value): context, 4-byte big-endian key length, key, value. */
static PyObject *
signed_bytes(PyObject *key, PyObject *value)
{
    const char *k, *v;
    Py_ssize_t klen, vlen;
    unsigned char length[4];
    if (as_bytes(key, &k, &klen) < 0 || as_bytes(value, &v, &vlen) < 0
        || length_prefix(klen, length) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, RECORD_CONTEXT_LEN + 4 + klen + vlen);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, RECORD_CONTEXT, RECORD_CONTEXT_LEN);
    p += RECORD_CONTEXT_LEN;
    memcpy(p, length, 4);
    p += 4;
    memcpy(p, k, (size_t)klen);
    memcpy(p + klen, v, (size_t)vlen);
    return out;
}

static int
leaf(PyObject *key, PyObject *value, unsigned char out[DIGEST])
{
    const char *k, *v;
    Py_ssize_t klen, vlen;
    unsigned char length[4];
    if (as_bytes(key, &k, &klen) < 0 || as_bytes(value, &v, &vlen) < 0
        || length_prefix(klen, length) < 0)
        return -1;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, &LEAF, 1);
    SHA256_Update(&ctx, RECORD_CONTEXT, RECORD_CONTEXT_LEN);
    SHA256_Update(&ctx, length, 4);
    SHA256_Update(&ctx, k, (size_t)klen);
    SHA256_Update(&ctx, v, (size_t)vlen);
    SHA256_Final(out, &ctx);
    return 0;
}

static void
node(const unsigned char *left, const unsigned char *right, unsigned char out[DIGEST])
{
    unsigned char block[1 + 2 * DIGEST];
    block[0] = NODE;
    memcpy(block + 1, left, DIGEST);
    memcpy(block + 1 + DIGEST, right, DIGEST);
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, block, sizeof block);
    SHA256_Final(out, &ctx);
}

/* One tree of n >= 2 records: (ROOT_CONTEXT + root, [proof, ...]). `hashes` and `steps`
 * have room for every level's nodes: n + ceil(n/2) + ... + 1 <= 2n + 64. */
static PyObject *
tree(PyObject **keys, PyObject **values, Py_ssize_t n, unsigned char *hashes, char *steps)
{
    /* Every level's nodes, leaves first, one after another in `hashes`; each node's step
     * (its side and hash, as a sibling) at the same position in `steps`. */
    Py_ssize_t starts[66], counts[66];
    int levels = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (leaf(keys[i], values[i], hashes + i * DIGEST) < 0)
            return NULL;
    Py_ssize_t start = 0, count = n;
    while (count > 1) {
        starts[levels] = start;
        counts[levels] = count;
        levels++;
        const unsigned char *level = hashes + start * DIGEST;
        unsigned char *above = hashes + (start + count) * DIGEST;
        /* A node is only ever a sibling from one side: an even index is the left sibling
         * of its right neighbour, an odd index the right sibling of its left neighbour. */
        for (Py_ssize_t i = 0; i < count; i++)
            step_b64(i % 2 ? SIDE_RIGHT : SIDE_LEFT, level + i * DIGEST,
                     steps + (start + i) * STEP_B64);
        Py_ssize_t pairs = count / 2;
        for (Py_ssize_t i = 0; i < pairs; i++)
            node(level + 2 * i * DIGEST, level + (2 * i + 1) * DIGEST, above + i * DIGEST);
        if (count % 2) /* the odd one out moves up unchanged */
            memcpy(above + pairs * DIGEST, level + (count - 1) * DIGEST, DIGEST);
        start += count;
        count = pairs + count % 2;
    }
    PyObject *proofs = PyList_New(n);
    if (proofs == NULL)
        return NULL;
    for (Py_ssize_t j = 0; j < n; j++) {
        /* A node's proof is its sibling's step, then its parent's proof; the odd one out
         * has no sibling at its level. */
        Py_ssize_t size = 0, index = j;
        for (int l = 0; l < levels; index /= 2, l++)
            if ((index ^ 1) < counts[l])
                size += STEP_B64;
        PyObject *proof = PyBytes_FromStringAndSize(NULL, size);
        if (proof == NULL) {
            Py_DECREF(proofs);
            return NULL;
        }
        char *p = PyBytes_AS_STRING(proof);
        index = j;
        for (int l = 0; l < levels; index /= 2, l++) {
            Py_ssize_t sibling = index ^ 1;
            if (sibling < counts[l]) {
                memcpy(p, steps + (starts[l] + sibling) * STEP_B64, STEP_B64);
                p += STEP_B64;
            }
        }
        PyList_SET_ITEM(proofs, j, proof);
    }
    PyObject *message = PyBytes_FromStringAndSize(NULL, ROOT_CONTEXT_LEN + DIGEST);
    if (message == NULL) {
        Py_DECREF(proofs);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(message), ROOT_CONTEXT, ROOT_CONTEXT_LEN);
    memcpy(PyBytes_AS_STRING(message) + ROOT_CONTEXT_LEN, hashes + start * DIGEST, DIGEST);
    return Py_BuildValue("(NN)", message, proofs);
}

PyDoc_STRVAR(forest_doc,
"forest(keys, values, tree_size, /)\n--\n\n"
"Trees of `tree_size` consecutive records (the last may be smaller): per tree, the message\n"
"its signature covers and each record's `retention-proof` header value (none for a tree\n"
"of one, signed per record). What schemas.signing._forest_py returns, byte for byte.");

static PyObject *
forest(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "forest() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t tree_size = PyLong_AsSsize_t(args[2]);
    if (tree_size == -1 && PyErr_Occurred())
        return NULL;
    if (tree_size < 1) {
        PyErr_SetString(PyExc_ValueError, "a signature tree holds at least one record");
        return NULL;
    }
    /* Tuples, not the caller's lists: creating the results can run a collection, and with
     * it a finalizer, which must not resize what is being read while it is read. (The copy
     * itself is CPython's; on 3.11 a finalizer emptying the very list being copied breaks
     * `tuple(list)` as well. The callers pass lists they have just built, which no
     * finalizer can reach.) */
    PyObject *keys = PySequence_Tuple(args[0]);
    if (keys == NULL)
        return NULL;
    PyObject *values = PySequence_Tuple(args[1]);
    if (values == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    PyObject *result = NULL;
    unsigned char *hashes = NULL;
    char *steps = NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(keys);
    if (PyTuple_GET_SIZE(values) != total) {
        PyErr_SetString(PyExc_ValueError, "as many values as keys");
        goto done;
    }
    Py_ssize_t most = total < tree_size ? total : tree_size;
    if (most > (PY_SSIZE_T_MAX / STEP_B64 - 64) / 2) {
        PyErr_NoMemory();
        goto done;
    }
    hashes = PyMem_Malloc((size_t)(2 * most + 64) * DIGEST);
    steps = PyMem_Malloc((size_t)(2 * most + 64) * STEP_B64);
    result = PyList_New(0);
    if (hashes == NULL || steps == NULL || result == NULL) {
        if (result == NULL || !PyErr_Occurred())
            PyErr_NoMemory();
        Py_CLEAR(result);
        goto done;
    }
    PyObject **ks = &PyTuple_GET_ITEM(keys, 0), **vs = &PyTuple_GET_ITEM(values, 0);
    for (Py_ssize_t start = 0; start < total; start += tree_size) {
        Py_ssize_t n = total - start < tree_size ? total - start : tree_size;
        PyObject *entry;
        if (n == 1) {
            PyObject *message = signed_bytes(ks[start], vs[start]);
            entry = message == NULL ? NULL : Py_BuildValue("(N[])", message);
        }
        else {
            entry = tree(ks + start, vs + start, n, hashes, steps);
        }
        if (entry == NULL || PyList_Append(result, entry) < 0) {
            Py_XDECREF(entry);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(entry);
    }
done:
    PyMem_Free(hashes);
    PyMem_Free(steps);
    Py_DECREF(keys);
    Py_DECREF(values);
    return result;
}

static PyMethodDef methods[] = {
    {"forest", (PyCFunction)(void (*)(void))forest, METH_FASTCALL, forest_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schemas._merkle",
    .m_doc = "The batch signature scheme's hashing in C (schemas.signing chooses it).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__merkle(void)
{
    return PyModule_Create(&module);
}
