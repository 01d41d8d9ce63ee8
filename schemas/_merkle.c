/*
 * schemas._merkle: the batch signature scheme's hashing (docs/protocol.md) in C.
 *
 * `forest` is `schemas.signing._forest_py` in one call: the same trees, the same root
 * messages, the same `retention-proof` header values, byte for byte (tests/test_signing_native.py
 * compares them over random inputs). `Walker.walk` is the proof walk of
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
#include <openssl/evp.h>

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

/* A record's signed bytes as read, before the GIL is let go: its key (NULL: none) and
 * value, borrowed from objects the caller holds for the whole call. */
typedef struct {
    const char *key, *value;
    Py_ssize_t key_size, value_size;
} Signed;

static int
read_signed(PyObject *key, PyObject *value, Signed *out)
{
    unsigned char length[4];
    if (as_bytes(key, &out->key, &out->key_size) < 0
        || as_bytes(value, &out->value, &out->value_size) < 0
        || length_prefix(out->key_size, length) < 0)
        return -1;
    return 0;
}

static void
leaf_of(const Signed *r, unsigned char out[DIGEST])
{
    unsigned char length[4];
    length[0] = (unsigned char)(r->key_size >> 24);
    length[1] = (unsigned char)(r->key_size >> 16);
    length[2] = (unsigned char)(r->key_size >> 8);
    length[3] = (unsigned char)r->key_size;
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, &LEAF, 1);
    SHA256_Update(&ctx, RECORD_CONTEXT, RECORD_CONTEXT_LEN);
    SHA256_Update(&ctx, length, 4);
    SHA256_Update(&ctx, r->key, (size_t)r->key_size);
    SHA256_Update(&ctx, r->value, (size_t)r->value_size);
    SHA256_Final(out, &ctx);
}

static int
leaf(PyObject *key, PyObject *value, unsigned char out[DIGEST])
{
    Signed r;
    if (read_signed(key, value, &r) < 0)
        return -1;
    leaf_of(&r, out);
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

/* Levels of a tree of n records: the length of its longest proof, in steps. */
static int
depth(Py_ssize_t n)
{
    int levels = 0;
    for (; n > 1; n = n / 2 + n % 2)
        levels++;
    return levels;
}

/* One tree of n >= 2 records, touching no Python object (it runs without the GIL): its
 * root, and each record's `retention-proof` value written one after another at `proofs`
 * (record j's from ends[j - 1], or 0, to ends[j]). `hashes` and `steps` have room for
 * every level's nodes: n + ceil(n/2) + ... + 1 <= 2n + 64; `proofs` for n * depth(n)
 * steps. */
static void
tree_core(const Signed *records, Py_ssize_t n, unsigned char *hashes, char *steps,
          unsigned char root[DIGEST], char *proofs, Py_ssize_t *ends)
{
    /* Every level's nodes, leaves first, one after another in `hashes`; each node's step
     * (its side and hash, as a sibling) at the same position in `steps`. */
    Py_ssize_t starts[66], counts[66];
    int levels = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        leaf_of(&records[i], hashes + i * DIGEST);
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
    char *p = proofs;
    for (Py_ssize_t j = 0; j < n; j++) {
        /* A node's proof is its sibling's step, then its parent's proof; the odd one out
         * has no sibling at its level. */
        Py_ssize_t index = j;
        for (int l = 0; l < levels; index /= 2, l++) {
            Py_ssize_t sibling = index ^ 1;
            if (sibling < counts[l]) {
                memcpy(p, steps + (starts[l] + sibling) * STEP_B64, STEP_B64);
                p += STEP_B64;
            }
        }
        ends[j] = p - proofs;
    }
    memcpy(root, hashes + start * DIGEST, DIGEST);
}

/* The proofs `tree_core` wrote, as a list of bytes. */
static PyObject *
proof_list(const char *proofs, const Py_ssize_t *ends, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    if (list == NULL)
        return NULL;
    Py_ssize_t from = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *proof = PyBytes_FromStringAndSize(proofs + from, ends[j] - from);
        if (proof == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, j, proof);
        from = ends[j];
    }
    return list;
}

/* Work space for trees of up to `most` records (see `tree_core`). */
typedef struct {
    Signed *records;
    unsigned char *hashes;
    char *steps, *proofs;
    Py_ssize_t *ends;
} Space;

static void
space_free(Space *s)
{
    PyMem_RawFree(s->records);
    PyMem_RawFree(s->hashes);
    PyMem_RawFree(s->steps);
    PyMem_RawFree(s->proofs);
    PyMem_RawFree(s->ends);
}

/* `records` for `total` records, the rest for trees of up to `most`, `proof_records`
 * proofs of them at once; raises MemoryError. Raw allocations: freed, and used, without
 * the GIL too. */
static int
space_alloc(Space *s, Py_ssize_t total, Py_ssize_t most, Py_ssize_t proof_records)
{
    memset(s, 0, sizeof *s);
    int steps = depth(most);
    if (most > (PY_SSIZE_T_MAX / STEP_B64 - 64) / 2
        || (steps && proof_records > PY_SSIZE_T_MAX / STEP_B64 / steps)) {
        PyErr_NoMemory();
        return -1;
    }
    s->records = PyMem_RawMalloc((size_t)(total ? total : 1) * sizeof(Signed));
    s->hashes = PyMem_RawMalloc((size_t)(2 * most + 64) * DIGEST);
    s->steps = PyMem_RawMalloc((size_t)(2 * most + 64) * STEP_B64);
    s->proofs = PyMem_RawMalloc((size_t)(proof_records * steps + 1) * STEP_B64);
    s->ends = PyMem_RawMalloc((size_t)(proof_records + 1) * sizeof(Py_ssize_t));
    if (s->records == NULL || s->hashes == NULL || s->steps == NULL || s->proofs == NULL
        || s->ends == NULL) {
        space_free(s);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* One tree of n >= 2 records: (ROOT_CONTEXT + root, [proof, ...]). */
static PyObject *
tree(const Signed *records, Py_ssize_t n, Space *space)
{
    unsigned char root[DIGEST];
    tree_core(records, n, space->hashes, space->steps, root, space->proofs, space->ends);
    PyObject *proofs = proof_list(space->proofs, space->ends, n);
    if (proofs == NULL)
        return NULL;
    PyObject *message = PyBytes_FromStringAndSize(NULL, ROOT_CONTEXT_LEN + DIGEST);
    if (message == NULL) {
        Py_DECREF(proofs);
        return NULL;
    }
    memcpy(PyBytes_AS_STRING(message), ROOT_CONTEXT, ROOT_CONTEXT_LEN);
    memcpy(PyBytes_AS_STRING(message) + ROOT_CONTEXT_LEN, root, DIGEST);
    return Py_BuildValue("(NN)", message, proofs);
}

/* Keys and values as tuples of our own, of one length: creating the results can run a
 * collection, and with it a finalizer, which must not resize what is being read while
 * it is read. (The copy itself is CPython's; on 3.11 a finalizer emptying the very list
 * being copied breaks `tuple(list)` as well. The callers pass lists they have just built,
 * which no finalizer can reach.) The tuples also keep every key and value alive, and
 * bytes do not change: their buffers may be read without the GIL. */
static int
columns_of(PyObject *keys_arg, PyObject *values_arg, PyObject *size_arg, PyObject **keys,
           PyObject **values, Py_ssize_t *tree_size)
{
    *keys = *values = NULL;
    *tree_size = PyLong_AsSsize_t(size_arg);
    if (*tree_size == -1 && PyErr_Occurred())
        return -1;
    if (*tree_size < 1) {
        PyErr_SetString(PyExc_ValueError, "a signature tree holds at least one record");
        return -1;
    }
    *keys = PySequence_Tuple(keys_arg);
    *values = *keys ? PySequence_Tuple(values_arg) : NULL;
    if (*values == NULL) {
        Py_CLEAR(*keys);
        return -1;
    }
    if (PyTuple_GET_SIZE(*values) != PyTuple_GET_SIZE(*keys)) {
        PyErr_SetString(PyExc_ValueError, "as many values as keys");
        Py_CLEAR(*keys);
        Py_CLEAR(*values);
        return -1;
    }
    return 0;
}

/* Every record's key and value into `records`. */
static int
read_all(PyObject *keys, PyObject *values, Signed *records)
{
    Py_ssize_t total = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < total; i++)
        if (read_signed(PyTuple_GET_ITEM(keys, i), PyTuple_GET_ITEM(values, i), &records[i]) < 0)
            return -1;
    return 0;
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
    PyObject *keys, *values;
    Py_ssize_t tree_size;
    if (columns_of(args[0], args[1], args[2], &keys, &values, &tree_size) < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(keys);
    Py_ssize_t most = total < tree_size ? total : tree_size;
    Space space;
    if (space_alloc(&space, total, most, most) < 0)
        goto done;
    if (read_all(keys, values, space.records) < 0)
        goto freed;
    result = PyList_New(0);
    if (result == NULL)
        goto freed;
    PyObject **ks = &PyTuple_GET_ITEM(keys, 0), **vs = &PyTuple_GET_ITEM(values, 0);
    for (Py_ssize_t start = 0; start < total; start += tree_size) {
        Py_ssize_t n = total - start < tree_size ? total - start : tree_size;
        PyObject *entry;
        if (n == 1) {
            PyObject *message = signed_bytes(ks[start], vs[start]);
            entry = message == NULL ? NULL : Py_BuildValue("(N[])", message);
        }
        else {
            entry = tree(space.records + start, n, &space);
        }
        if (entry == NULL || PyList_Append(result, entry) < 0) {
            Py_XDECREF(entry);
            Py_CLEAR(result);
            goto freed;
        }
        Py_DECREF(entry);
    }
freed:
    space_free(&space);
done:
    Py_DECREF(keys);
    Py_DECREF(values);
    return result;
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
} Walker;

static void
walker_dealloc(Walker *self)
{
    Py_XDECREF(self->proof);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(walk_doc,
"walk(key, value, headers, /)\n--\n\n"
"For a record whose headers (a list or tuple of (str, bytes) pairs) hold exactly one\n"
"`retention-signature` and one `retention-proof`, the proof of 1 to 32 steps, each\n"
"strict standard base64 of a side 0 or 1 and a hash, and whose key and value are bytes\n"
"or None: (the signature header's value, the 32-byte root the proof leads to from the\n"
"record's leaf). None for anything else, which schemas.signing.Verifier then judges in\n"
"Python.");

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
    PyObject *signature = NULL, *proof = NULL;
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
        else
            continue;
        /* A repeated or null header is Python's to judge (malformed). */
        if (*slot != NULL || !PyBytes_Check(header))
            Py_RETURN_NONE;
        *slot = header;
    }
    if (signature == NULL || proof == NULL)
        Py_RETURN_NONE;
    Py_ssize_t size = PyBytes_GET_SIZE(proof);
    if (size <= 0 || size > MAX_PROOF_STEPS * STEP_B64 || size % STEP_B64)
        Py_RETURN_NONE;
    if ((key != Py_None && !PyBytes_Check(key)) || (value != Py_None && !PyBytes_Check(value)))
        Py_RETURN_NONE;
    /* Python raises for a key this long, unless it judges the header first. */
    if (key != Py_None && (unsigned long long)PyBytes_GET_SIZE(key) > 0xFFFFFFFFULL)
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

/* ---- Signer: `schemas.signing.Signer.sign_columns` without the GIL ---- */

#define SIGNATURE 64
#define SIGNATURE_B64 88 /* standard base64 of 64 bytes, padded */

/* Standard base64 with padding, as Python's base64.b64encode. */
static void
b64_padded(const unsigned char *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned int v = (unsigned int)in[i] << 16 | (unsigned int)in[i + 1] << 8 | in[i + 2];
        *out++ = B64[v >> 18];
        *out++ = B64[(v >> 12) & 63];
        *out++ = B64[(v >> 6) & 63];
        *out++ = B64[v & 63];
    }
    if (n - i == 1) {
        unsigned int v = (unsigned int)in[i] << 16;
        *out++ = B64[v >> 18];
        *out++ = B64[(v >> 12) & 63];
        *out++ = '=';
        *out++ = '=';
    }
    else if (n - i == 2) {
        unsigned int v = (unsigned int)in[i] << 16 | (unsigned int)in[i + 1] << 8;
        *out++ = B64[v >> 18];
        *out++ = B64[(v >> 12) & 63];
        *out++ = B64[(v >> 6) & 63];
        *out++ = '=';
    }
}

typedef struct {
    PyObject_HEAD
    EVP_PKEY *key;
    PyObject *prefix; /* bytes: the key id and ":", what every signature header starts with */
} SignerObject;

static void
signer_dealloc(SignerObject *self)
{
    EVP_PKEY_free(self->key);
    Py_XDECREF(self->prefix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
signer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    Py_buffer seed;
    PyObject *prefix;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Signer() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*O!:Signer", &seed, &PyBytes_Type, &prefix))
        return NULL;
    EVP_PKEY *key = NULL;
    if (seed.len == 32)
        key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL,
                                           (const unsigned char *)seed.buf, 32);
    PyBuffer_Release(&seed);
    if (key == NULL) {
        /* Nothing of the key in the message. */
        PyErr_SetString(PyExc_ValueError, "an Ed25519 private key is a 32-byte seed");
        return NULL;
    }
    SignerObject *self = (SignerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        EVP_PKEY_free(key);
        return NULL;
    }
    self->key = key;
    Py_INCREF(prefix);
    self->prefix = prefix;
    return (PyObject *)self;
}

/* Ed25519 over `message` into `out`; 0, or -1 when OpenSSL failed. */
static int
ed25519(EVP_PKEY *key, EVP_MD_CTX *ctx, const unsigned char *message, size_t size,
        unsigned char out[SIGNATURE])
{
    size_t length = SIGNATURE;
    if (EVP_MD_CTX_reset(ctx) != 1 || EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) != 1
        || EVP_DigestSign(ctx, out, &length, message, size) != 1 || length != SIGNATURE)
        return -1;
    return 0;
}

/* The trees of `total` records, hashed and signed without the GIL: each tree's signature
 * at `signatures`, each record's proof in `space`. -1: OpenSSL failed. */
static int
sign_trees(EVP_PKEY *key, Space *space, Py_ssize_t total, Py_ssize_t tree_size,
           unsigned char *signatures)
{
    int failed = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    char *proofs = space->proofs;
    Py_ssize_t offset = 0; /* of this tree's proofs in `space->proofs` */
    for (Py_ssize_t start = 0, t = 0; start < total && !failed; start += tree_size, t++) {
        Py_ssize_t n = total - start < tree_size ? total - start : tree_size;
        const Signed *records = space->records + start;
        unsigned char *signature = signatures + t * SIGNATURE;
        if (n == 1) {
            /* A tree of one: signed per record, over its signed bytes; no proof. */
            const Signed *r = records;
            size_t size = RECORD_CONTEXT_LEN + 4 + (size_t)r->key_size + (size_t)r->value_size;
            unsigned char *message = PyMem_RawMalloc(size);
            if (message == NULL)
                failed = 1;
            else {
                unsigned char *p = message;
                memcpy(p, RECORD_CONTEXT, RECORD_CONTEXT_LEN);
                p += RECORD_CONTEXT_LEN;
                p[0] = (unsigned char)(r->key_size >> 24);
                p[1] = (unsigned char)(r->key_size >> 16);
                p[2] = (unsigned char)(r->key_size >> 8);
                p[3] = (unsigned char)r->key_size;
                memcpy(p + 4, r->key, (size_t)r->key_size);
                memcpy(p + 4 + r->key_size, r->value, (size_t)r->value_size);
                failed = ed25519(key, ctx, message, size, signature) < 0;
                PyMem_RawFree(message);
            }
            space->ends[start] = offset;
            continue;
        }
        unsigned char message[ROOT_CONTEXT_LEN + DIGEST];
        memcpy(message, ROOT_CONTEXT, ROOT_CONTEXT_LEN);
        tree_core(records, n, space->hashes, space->steps, message + ROOT_CONTEXT_LEN,
                  proofs + offset, space->ends + start);
        for (Py_ssize_t j = 0; j < n; j++)
            space->ends[start + j] += offset;
        offset = space->ends[start + n - 1];
        failed = ed25519(key, ctx, message, sizeof message, signature) < 0;
    }
    EVP_MD_CTX_free(ctx);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(columns_doc,
"columns(keys, values, tree_size, /)\n--\n\n"
"schemas.signing.Signer.sign_columns: trees of `tree_size` consecutive records, each\n"
"record's `retention-signature` and `retention-proof` header values (None: a tree of\n"
"one, no proof), byte for byte. The hashing and signing run without the GIL, so another\n"
"thread (the relay's event loop) goes on meanwhile.");

static PyObject *
signer_columns(SignerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "columns() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *keys, *values;
    Py_ssize_t tree_size;
    if (columns_of(args[0], args[1], args[2], &keys, &values, &tree_size) < 0)
        return NULL;
    PyObject *result = NULL, *signatures = NULL, *proofs = NULL;
    Py_ssize_t total = PyTuple_GET_SIZE(keys);
    Py_ssize_t most = total < tree_size ? total : tree_size;
    Py_ssize_t trees = total ? (total - 1) / tree_size + 1 : 0;
    unsigned char *signed_roots = NULL;
    Space space;
    if (space_alloc(&space, total, most, total) < 0)
        goto done;
    signed_roots = PyMem_RawMalloc((size_t)(trees ? trees : 1) * SIGNATURE);
    if (signed_roots == NULL) {
        PyErr_NoMemory();
        goto freed;
    }
    if (read_all(keys, values, space.records) < 0)
        goto freed;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = sign_trees(self->key, &space, total, tree_size, signed_roots);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_MemoryError, "out of memory, or OpenSSL could not sign");
        goto freed;
    }
    signatures = PyList_New(total);
    proofs = PyList_New(total);
    if (signatures == NULL || proofs == NULL)
        goto freed;
    Py_ssize_t prefix = PyBytes_GET_SIZE(self->prefix), from = 0;
    for (Py_ssize_t t = 0; t < trees; t++) {
        PyObject *header = PyBytes_FromStringAndSize(NULL, prefix + SIGNATURE_B64);
        if (header == NULL)
            goto freed;
        memcpy(PyBytes_AS_STRING(header), PyBytes_AS_STRING(self->prefix), (size_t)prefix);
        b64_padded(signed_roots + t * SIGNATURE, SIGNATURE, PyBytes_AS_STRING(header) + prefix);
        Py_ssize_t start = t * tree_size;
        Py_ssize_t n = total - start < tree_size ? total - start : tree_size;
        for (Py_ssize_t j = start; j < start + n; j++) {
            Py_INCREF(header);
            PyList_SET_ITEM(signatures, j, header);
            PyObject *proof;
            if (n == 1) {
                proof = Py_None;
                Py_INCREF(proof);
            }
            else {
                proof = PyBytes_FromStringAndSize(space.proofs + from, space.ends[j] - from);
                if (proof == NULL) {
                    Py_DECREF(header);
                    goto freed;
                }
                from = space.ends[j];
            }
            PyList_SET_ITEM(proofs, j, proof);
        }
        Py_DECREF(header);
    }
    result = PyTuple_Pack(2, signatures, proofs);
freed:
    PyMem_RawFree(signed_roots);
    space_free(&space);
    Py_XDECREF(signatures);
    Py_XDECREF(proofs);
done:
    Py_DECREF(keys);
    Py_DECREF(values);
    return result;
}

static PyMethodDef signer_methods[] = {
    {"columns", (PyCFunction)(void (*)(void))signer_columns, METH_FASTCALL, columns_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SignerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._merkle.Signer",
    .tp_doc = PyDoc_STR("Signer(seed, prefix)\n--\n\nSigns columns of records with one Ed25519 "
                        "key (its 32-byte seed); every signature header starts with `prefix`."),
    .tp_basicsize = sizeof(SignerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = signer_new,
    .tp_dealloc = (destructor)signer_dealloc,
    .tp_methods = signer_methods,
};

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
    memset(B64_VALUES, -1, sizeof B64_VALUES);
    for (int i = 0; i < 64; i++)
        B64_VALUES[(unsigned char)B64[i]] = (signed char)i;
    if (PyType_Ready(&WalkerType) < 0 || PyType_Ready(&SignerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Walker", (PyObject *)&WalkerType) < 0
        || PyModule_AddObjectRef(m, "Signer", (PyObject *)&SignerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
