/*
 * schemas._merkle: the batch signature scheme's hashing (docs/protocol.md) in C.
 *
 * `forest` is `schemas.signing._forest_py` in one call: the same trees, the same root
 * messages, the same `retention-proof` header values, byte for byte (tests/test_signing_native.py
 * compares them over random inputs), and `forest_v2` / `root_v2` proof format v2's
 * `_forest_v2_py` / `_root_v2_py`. `Walker.walk` is the proof walk of
 * `schemas.signing.Verifier._batch_valid` for a well-formed record: the same root, and
 * None for anything it declines, which Python then judges (tests/test_verify_native.py). The pure-Python code stays the reference and the
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
#define MAX_PROOF_STEPS 32 /* schemas.signing.MAX_PROOF_STEPS */

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

/* The argument count and `tree_size` (the third argument) of `forest` and `forest_v2`:
 * -1 with an exception set when either is wrong. */
static Py_ssize_t
tree_size_arg(const char *name, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected,
                     nargs);
        return -1;
    }
    Py_ssize_t tree_size = PyLong_AsSsize_t(args[2]);
    if (tree_size == -1 && PyErr_Occurred())
        return -1;
    if (tree_size < 1) {
        PyErr_SetString(PyExc_ValueError, "a signature tree holds at least one record");
        return -1;
    }
    return tree_size;
}

PyDoc_STRVAR(forest_doc,
"forest(keys, values, tree_size, /)\n--\n\n"
"Trees of `tree_size` consecutive records (the last may be smaller): per tree, the message\n"
"its signature covers and each record's `retention-proof` header value (none for a tree\n"
"of one, signed per record). What schemas.signing._forest_py returns, byte for byte.");

static PyObject *
forest(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t tree_size = tree_size_arg("forest", args, nargs, 3);
    if (tree_size < 0)
        return NULL;
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

/* Proof format v2 (docs/protocol.md): salted leaves, 16-byte nodes, one binary
 * `retention-batch` value per record. */
#define HALF 16          /* a v2 node (SHA-256 truncated) and a v2 salt */
#define KEY_ID 8
#define SIGNATURE 64
#define BATCH_FIXED 94   /* format, key id, signature, salt, steps, sides */
static const char ROOT_CONTEXT_V2[] = "retention-root-v2"; /* + its NUL: 18 bytes */

static int
leaf_v2(PyObject *key, PyObject *value, const unsigned char *salt, unsigned char out[HALF])
{
    const char *k, *v;
    Py_ssize_t klen, vlen;
    unsigned char length[4], digest[DIGEST];
    if (as_bytes(key, &k, &klen) < 0 || as_bytes(value, &v, &vlen) < 0
        || length_prefix(klen, length) < 0)
        return -1;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, &LEAF, 1);
    SHA256_Update(&ctx, salt, HALF);
    SHA256_Update(&ctx, RECORD_CONTEXT, RECORD_CONTEXT_LEN);
    SHA256_Update(&ctx, length, 4);
    SHA256_Update(&ctx, k, (size_t)klen);
    SHA256_Update(&ctx, v, (size_t)vlen);
    SHA256_Final(digest, &ctx);
    memcpy(out, digest, HALF);
    return 0;
}

static void
node_v2(const unsigned char *left, const unsigned char *right, unsigned char out[HALF])
{
    unsigned char block[1 + 2 * HALF], digest[DIGEST];
    block[0] = NODE;
    memcpy(block + 1, left, HALF);
    memcpy(block + 1 + HALF, right, HALF);
    /* Not the one-shot SHA256(): in OpenSSL 3 it fetches the algorithm on every call. */
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, block, sizeof block);
    SHA256_Final(digest, &ctx);
    memcpy(out, digest, HALF);
}

/* One tree of n >= 2 records: each record's `retention-batch` value set into `out` from
 * `at` on. `hashes` has room for every level's nodes (<= 2n + 64). */
static int
tree_v2(PyObject **keys, PyObject **values, Py_ssize_t n, const unsigned char *salt,
        PyObject *sign, const unsigned char *kid, unsigned char *hashes, PyObject *out,
        Py_ssize_t at)
{
    Py_ssize_t starts[66], counts[66];
    int levels = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (leaf_v2(keys[i], values[i], salt, hashes + i * HALF) < 0)
            return -1;
    Py_ssize_t start = 0, count = n;
    while (count > 1) {
        starts[levels] = start;
        counts[levels] = count;
        levels++;
        const unsigned char *level = hashes + start * HALF;
        unsigned char *above = hashes + (start + count) * HALF;
        Py_ssize_t pairs = count / 2;
        for (Py_ssize_t i = 0; i < pairs; i++)
            node_v2(level + 2 * i * HALF, level + (2 * i + 1) * HALF, above + i * HALF);
        if (count % 2) /* the odd one out moves up unchanged */
            memcpy(above + pairs * HALF, level + (count - 1) * HALF, HALF);
        start += count;
        count = pairs + count % 2;
    }
    unsigned char message[ROOT_CONTEXT_LEN + 2 * HALF];
    memcpy(message, ROOT_CONTEXT_V2, ROOT_CONTEXT_LEN);
    memcpy(message + ROOT_CONTEXT_LEN, salt, HALF);
    memcpy(message + ROOT_CONTEXT_LEN + HALF, hashes + start * HALF, HALF);
    PyObject *text = PyBytes_FromStringAndSize((const char *)message, sizeof message);
    if (text == NULL)
        return -1;
    PyObject *signature = PyObject_CallOneArg(sign, text);
    Py_DECREF(text);
    if (signature == NULL)
        return -1;
    if (!PyBytes_Check(signature) || PyBytes_GET_SIZE(signature) != SIGNATURE) {
        Py_DECREF(signature);
        PyErr_SetString(PyExc_ValueError, "sign() returns the 64 bytes of a signature");
        return -1;
    }
    unsigned char prefix[1 + KEY_ID + SIGNATURE + HALF];
    prefix[0] = 0x02;
    memcpy(prefix + 1, kid, KEY_ID);
    memcpy(prefix + 1 + KEY_ID, PyBytes_AS_STRING(signature), SIGNATURE);
    memcpy(prefix + 1 + KEY_ID + SIGNATURE, salt, HALF);
    Py_DECREF(signature);
    for (Py_ssize_t j = 0; j < n; j++) {
        /* A leaf's steps: at each level its sibling, if it has one (the odd one out has
         * none), from the leaf up. */
        int steps = 0;
        Py_ssize_t index = j;
        for (int l = 0; l < levels; index /= 2, l++)
            if ((index ^ 1) < counts[l])
                steps++;
        PyObject *value = PyBytes_FromStringAndSize(NULL, BATCH_FIXED + HALF * steps);
        if (value == NULL)
            return -1;
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(value);
        memcpy(p, prefix, sizeof prefix);
        p[89] = (unsigned char)steps;
        unsigned long sides = 0;
        unsigned char *sibling = p + BATCH_FIXED;
        int step = 0;
        index = j;
        for (int l = 0; l < levels; index /= 2, l++) {
            Py_ssize_t other = index ^ 1;
            if (other < counts[l]) {
                if (other > index)
                    sides |= 1UL << step;
                memcpy(sibling, hashes + (starts[l] + other) * HALF, HALF);
                sibling += HALF;
                step++;
            }
        }
        p[90] = (unsigned char)(sides >> 24);
        p[91] = (unsigned char)(sides >> 16);
        p[92] = (unsigned char)(sides >> 8);
        p[93] = (unsigned char)sides;
        PyList_SET_ITEM(out, at + j, value);
    }
    return 0;
}

PyDoc_STRVAR(forest_v2_doc,
"forest_v2(keys, values, tree_size, salts, sign, kid, /)\n--\n\n"
"Trees of `tree_size` consecutive records in proof format v2: each record's\n"
"`retention-batch` header value, None for a tree of one (signed per record). Tree t's salt\n"
"is salts[16 * t : 16 * t + 16]; sign(message) returns each root message's 64-byte\n"
"signature; kid is the key id's 8 bytes. What schemas.signing._forest_v2_py returns, byte\n"
"for byte.");

static PyObject *
forest_v2(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t tree_size = tree_size_arg("forest_v2", args, nargs, 6);
    if (tree_size < 0)
        return NULL;
    PyObject *salts = args[3], *sign = args[4], *kid = args[5];
    if (!PyBytes_Check(salts) || !PyBytes_Check(kid)) {
        PyErr_SetString(PyExc_TypeError, "salts and the key id are bytes");
        return NULL;
    }
    if (PyBytes_GET_SIZE(kid) != KEY_ID) {
        PyErr_SetString(PyExc_ValueError, "a key id is 8 bytes");
        return NULL;
    }
    /* Tuples, for the reason `forest` gives; `sign` runs Python code between trees. */
    PyObject *keys = PySequence_Tuple(args[0]);
    if (keys == NULL)
        return NULL;
    PyObject *values = PySequence_Tuple(args[1]);
    if (values == NULL) {
        Py_DECREF(keys);
        return NULL;
    }
    /* Owned: `sign` could drop the caller's references. */
    Py_INCREF(salts);
    Py_INCREF(sign);
    Py_INCREF(kid);
    PyObject *result = NULL;
    unsigned char *hashes = NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(keys);
    if (PyTuple_GET_SIZE(values) != total) {
        PyErr_SetString(PyExc_ValueError, "as many values as keys");
        goto done;
    }
    Py_ssize_t trees = total / tree_size + (total % tree_size != 0);
    if (PyBytes_GET_SIZE(salts) / HALF < trees) {
        PyErr_SetString(PyExc_ValueError, "16 bytes of salt per tree");
        goto done;
    }
    Py_ssize_t most = total < tree_size ? total : tree_size;
    if (most > (PY_SSIZE_T_MAX / HALF - 64) / 2) {
        PyErr_NoMemory();
        goto done;
    }
    hashes = PyMem_Malloc((size_t)(2 * most + 64) * HALF);
    if (hashes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(total);
    if (result == NULL)
        goto done;
    /* Until set, the list's items are NULL, which it tolerates only until it is read:
     * each is set before any failure returns it (it is dropped then). */
    PyObject **ks = &PyTuple_GET_ITEM(keys, 0), **vs = &PyTuple_GET_ITEM(values, 0);
    const unsigned char *salt = (const unsigned char *)PyBytes_AS_STRING(salts);
    const unsigned char *kid_bytes = (const unsigned char *)PyBytes_AS_STRING(kid);
    for (Py_ssize_t start = 0, tree = 0; start < total; start += tree_size, tree++) {
        Py_ssize_t n = total - start < tree_size ? total - start : tree_size;
        if (n == 1) {
            PyList_SET_ITEM(result, start, Py_NewRef(Py_None));
            continue;
        }
        if (tree_v2(ks + start, vs + start, n, salt + tree * HALF, sign, kid_bytes, hashes,
                    result, start) < 0) {
            Py_CLEAR(result);
            goto done;
        }
    }
done:
    PyMem_Free(hashes);
    Py_DECREF(keys);
    Py_DECREF(values);
    Py_DECREF(salts);
    Py_DECREF(sign);
    Py_DECREF(kid);
    return result;
}

PyDoc_STRVAR(root_v2_doc,
"root_v2(key, value, batch, /)\n--\n\n"
"The 16-byte root a `retention-batch` value's proof leads to from the record's salted\n"
"leaf; ValueError for a value not of 94 + 16 * n bytes with n in 1..32\n"
"(schemas.signing.Verifier checks that, and the rest of its shape, first). What\n"
"schemas.signing._root_v2_py returns.");

static PyObject *
root_v2(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "root_v2() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *batch = args[2];
    if (!PyBytes_Check(batch)) {
        PyErr_SetString(PyExc_TypeError, "a retention-batch value is bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(batch);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(batch);
    int steps = size < BATCH_FIXED ? 0 : p[89];
    if (steps < 1 || steps > MAX_PROOF_STEPS || size != BATCH_FIXED + HALF * steps) {
        PyErr_SetString(PyExc_ValueError, "not a retention-batch value's length");
        return NULL;
    }
    unsigned long sides = (unsigned long)p[90] << 24 | (unsigned long)p[91] << 16
                          | (unsigned long)p[92] << 8 | p[93];
    unsigned char node[HALF];
    if (leaf_v2(args[0], args[1], p + 1 + KEY_ID + SIGNATURE, node) < 0)
        return NULL;
    const unsigned char *sibling = p + BATCH_FIXED;
    for (int i = 0; i < steps; i++, sibling += HALF) {
        if (sides >> i & 1)
            node_v2(node, sibling, node);
        else
            node_v2(sibling, node, node);
    }
    return PyBytes_FromStringAndSize((const char *)node, HALF);
}

/* Each byte's value in standard base64, or -1 (padding included: a 44-character step has
 * none). */
static signed char B64_VALUES[256];

/* One proof step: 44 characters of the standard alphabet, exactly what strict base64
 * decodes to 33 bytes (33 is a multiple of 3, so no padding and no unused bits). -1 for
 * anything else. */
static int
decode_step(const unsigned char *text, unsigned char out[STEP])
{
    for (int i = 0, o = 0; i < STEP_B64; i += 4, o += 3) {
        int a = B64_VALUES[text[i]], b = B64_VALUES[text[i + 1]];
        int c = B64_VALUES[text[i + 2]], d = B64_VALUES[text[i + 3]];
        if ((a | b | c | d) < 0)
            return -1;
        unsigned int v = (unsigned int)a << 18 | (unsigned int)b << 12 | (unsigned int)c << 6
                         | (unsigned int)d;
        out[o] = (unsigned char)(v >> 16);
        out[o + 1] = (unsigned char)(v >> 8);
        out[o + 2] = (unsigned char)v;
    }
    return 0;
}

/* A verifier's walker: the last proof it walked to the end and every node of that walk,
 * so a record of the same tree stops where its walk meets the last one. What the walk
 * computes does not depend on it (the same node and the same rest of the proof text give
 * the same root, hashed or not), so any walk may fill it, an attacker's too: that only
 * costs the next record its shortcut. */
typedef struct {
    PyObject_HEAD
    PyObject *proof; /* the last walk's proof text (bytes), or NULL */
    Py_ssize_t steps;
    unsigned char nodes[MAX_PROOF_STEPS + 1][DIGEST]; /* after 0 (the leaf) .. steps steps */
    /* The same for proof format v2: the last `retention-batch` value walked to the end. */
    PyObject *batch;
    Py_ssize_t batch_steps;
    unsigned char batch_nodes[MAX_PROOF_STEPS + 1][HALF];
} Walker;

static void
walker_dealloc(Walker *self)
{
    Py_XDECREF(self->proof);
    Py_XDECREF(self->batch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Proof format v2's walk for `walker_walk`: a record with one `retention-batch` value of
 * the documented shape (format 2, 1 to 32 steps, its length, no side bit at or above the
 * step count) and no v1 header: (key id, signature and salt: the value's bytes 1..88, the
 * 16-byte root). None for any other value, which Python then judges. */
static PyObject *
walk_v2(Walker *self, PyObject *key, PyObject *value, PyObject *batch)
{
    Py_ssize_t size = PyBytes_GET_SIZE(batch);
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(batch);
    if (size < BATCH_FIXED || p[0] != 0x02)
        Py_RETURN_NONE;
    Py_ssize_t steps = p[89];
    if (steps < 1 || steps > MAX_PROOF_STEPS || size != BATCH_FIXED + HALF * steps)
        Py_RETURN_NONE;
    unsigned long sides = (unsigned long)p[90] << 24 | (unsigned long)p[91] << 16
                          | (unsigned long)p[92] << 8 | p[93];
    if (steps < 32 && sides >> steps)
        Py_RETURN_NONE;
    unsigned char nodes[MAX_PROOF_STEPS + 1][HALF];
    if (leaf_v2(key, value, p + 1 + KEY_ID + SIGNATURE, nodes[0]) < 0)
        return NULL;
    const unsigned char *siblings = p + BATCH_FIXED, *last = NULL;
    unsigned long last_sides = 0;
    if (self->batch != NULL) {
        const unsigned char *q = (const unsigned char *)PyBytes_AS_STRING(self->batch);
        last = q + BATCH_FIXED;
        last_sides = (unsigned long)q[90] << 24 | (unsigned long)q[91] << 16
                     | (unsigned long)q[92] << 8 | q[93];
    }
    for (Py_ssize_t k = 0; k < steps; k++) {
        /* Where the last walk had as many steps left: the same node there, the same
         * sides and siblings above lead to its root. */
        Py_ssize_t m = self->batch_steps - (steps - k);
        if (last != NULL && m >= 0 && memcmp(nodes[k], self->batch_nodes[m], HALF) == 0
            && sides >> k == last_sides >> m
            && memcmp(siblings + k * HALF, last + m * HALF, (size_t)((steps - k) * HALF)) == 0) {
            memcpy(nodes[k + 1], self->batch_nodes[m + 1], (size_t)(steps - k) * HALF);
            break;
        }
        if (sides >> k & 1)
            node_v2(nodes[k], siblings + k * HALF, nodes[k + 1]);
        else
            node_v2(siblings + k * HALF, nodes[k], nodes[k + 1]);
    }
    Py_INCREF(batch); /* owned: building the result can run a collection */
    PyObject *result = Py_BuildValue("(y#y#)", (const char *)p + 1,
                                     (Py_ssize_t)(KEY_ID + SIGNATURE + HALF),
                                     (const char *)nodes[steps], (Py_ssize_t)HALF);
    if (result == NULL) {
        Py_DECREF(batch);
        return NULL;
    }
    memcpy(self->batch_nodes, nodes, (size_t)(steps + 1) * HALF);
    self->batch_steps = steps;
    Py_XSETREF(self->batch, batch);
    return result;
}

PyDoc_STRVAR(walk_doc,
"walk(key, value, headers, /)\n--\n\n"
"For a record whose headers (a list or tuple of (str, bytes) pairs) hold exactly one\n"
"`retention-signature` and one `retention-proof`, the proof of 1 to 32 steps, each\n"
"strict standard base64 of a side 0 or 1 and a hash, and whose key and value are bytes\n"
"or None: (the signature header's value, the 32-byte root the proof leads to from the\n"
"record's leaf). For one with exactly one `retention-batch` of the documented shape and\n"
"neither of those: (its key id, signature and salt, the 16-byte root). None for anything\n"
"else, which schemas.signing.Verifier then judges in Python.");

static PyObject *
walker_walk(Walker *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "walk() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *key = args[0], *value = args[1], *headers = args[2];
    /* Only the exact types: their items are read in place, and nothing runs Python code
     * before the result is built (which can run a collection: what is kept from them is
     * owned by then). Anything else (an iterator, which must not be consumed here) is left
     * to Python. */
    if (!PyList_CheckExact(headers) && !PyTuple_CheckExact(headers))
        Py_RETURN_NONE;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
    PyObject **items = PySequence_Fast_ITEMS(headers);
    PyObject *signature = NULL, *proof = NULL, *batch = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = items[i];
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            Py_RETURN_NONE;
        PyObject *name = PyTuple_GET_ITEM(item, 0), *header = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_CheckExact(name))
            Py_RETURN_NONE;
        PyObject **slot;
        if (PyUnicode_CompareWithASCIIString(name, "retention-signature") == 0)
            slot = &signature;
        else if (PyUnicode_CompareWithASCIIString(name, "retention-proof") == 0)
            slot = &proof;
        else if (PyUnicode_CompareWithASCIIString(name, "retention-batch") == 0)
            slot = &batch;
        else
            continue;
        /* A repeated or null header is Python's to judge (malformed). */
        if (*slot != NULL || !PyBytes_Check(header))
            Py_RETURN_NONE;
        *slot = header;
    }
    if ((key != Py_None && !PyBytes_Check(key)) || (value != Py_None && !PyBytes_Check(value)))
        Py_RETURN_NONE;
    /* Python raises for a key this long, unless it judges the header first. */
    if (key != Py_None && (unsigned long long)PyBytes_GET_SIZE(key) > 0xFFFFFFFFULL)
        Py_RETURN_NONE;
    if (batch != NULL) {
        /* v1 headers beside a `retention-batch` are Python's to judge (malformed). */
        if (signature != NULL || proof != NULL)
            Py_RETURN_NONE;
        return walk_v2(self, key, value, batch);
    }
    if (signature == NULL || proof == NULL)
        Py_RETURN_NONE;
    Py_ssize_t size = PyBytes_GET_SIZE(proof);
    if (size <= 0 || size > MAX_PROOF_STEPS * STEP_B64 || size % STEP_B64)
        Py_RETURN_NONE;
    Py_ssize_t steps = size / STEP_B64;
    unsigned char nodes[MAX_PROOF_STEPS + 1][DIGEST], step[STEP];
    if (leaf(key, value, nodes[0]) < 0)
        return NULL;
    const char *text = PyBytes_AS_STRING(proof);
    const char *last = self->proof == NULL ? NULL : PyBytes_AS_STRING(self->proof);
    for (Py_ssize_t k = 0; k < steps; k++) {
        /* Where the last walk had as many steps left: the same node there and the same
         * rest of the proof text (decoded and hashed by that walk) lead to its root. */
        Py_ssize_t m = self->steps - (steps - k);
        if (last != NULL && m >= 0 && memcmp(nodes[k], self->nodes[m], DIGEST) == 0
            && memcmp(text + k * STEP_B64, last + m * STEP_B64,
                      (size_t)((steps - k) * STEP_B64)) == 0) {
            memcpy(nodes[k + 1], self->nodes[m + 1], (size_t)(steps - k) * DIGEST);
            break;
        }
        if (decode_step((const unsigned char *)text + k * STEP_B64, step) < 0)
            Py_RETURN_NONE;
        if (step[0] == SIDE_LEFT)
            node(step + 1, nodes[k], nodes[k + 1]);
        else if (step[0] == SIDE_RIGHT)
            node(nodes[k], step + 1, nodes[k + 1]);
        else
            Py_RETURN_NONE;
    }
    /* Owned from here: building the result can run a collection, and a finalizer could
     * empty the header list these were borrowed from. */
    Py_INCREF(signature);
    Py_INCREF(proof);
    PyObject *result = Py_BuildValue("(Ny#)", signature, (const char *)nodes[steps],
                                     (Py_ssize_t)DIGEST);
    if (result == NULL) {
        Py_DECREF(proof);
        return NULL;
    }
    memcpy(self->nodes, nodes, (size_t)(steps + 1) * DIGEST);
    self->steps = steps;
    Py_XSETREF(self->proof, proof);
    return result;
}

static PyMethodDef walker_methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walker_walk, METH_FASTCALL, walk_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._merkle.Walker",
    .tp_doc = PyDoc_STR("Walker()\n--\n\nWalks batch-signed records' proofs (one per Verifier)."),
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_methods = walker_methods,
};

static PyMethodDef methods[] = {
    {"forest", (PyCFunction)(void (*)(void))forest, METH_FASTCALL, forest_doc},
    {"forest_v2", (PyCFunction)(void (*)(void))forest_v2, METH_FASTCALL, forest_v2_doc},
    {"root_v2", (PyCFunction)(void (*)(void))root_v2, METH_FASTCALL, root_v2_doc},
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
    memset(B64_VALUES, -1, sizeof B64_VALUES);
    for (int i = 0; i < 64; i++)
        B64_VALUES[(unsigned char)B64[i]] = (signed char)i;
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
