/*
 * coordinator.kafka._recordbatch: Kafka v2 record batches (magic 2, uncompressed) in C.
 *
 * `fill` places a chunk's records on their partitions (murmur2, the Java client's and
 * aiokafka's default rule) and writes each partition's records into batches of at most
 * `batch_size` bytes in one call; `seal` writes the producer state and the CRC-32C when
 * aiokafka's sender takes a batch. The bytes are those of aiokafka's own
 * DefaultRecordBatchBuilder given the same timestamp (tests/test_recordbatch.py compares
 * them): it stays the fallback (coordinator/kafka/recordbatch.py) where this module did not
 * build or the relay compresses.
 *
 * What it saves is aiokafka's per-record Python and its byte-at-a-time software CRC-32C:
 * here the CRC runs on the CPU's crc32 instruction where it has one (SSE 4.2), else on
 * tables eight bytes at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 61      /* the v2 batch header, up to the record count included */
#define CRC_OFFSET 17       /* BaseOffset(8) Length(4) LeaderEpoch(4) Magic(1) */
#define ATTRIBUTES_OFFSET 21
#define PRODUCER_OFFSET 43  /* ProducerId(8) ProducerEpoch(2) BaseSequence(4) */
#define MAX_VARINT 10

/* ---- CRC-32C (Castagnoli), as Kafka and aiokafka's calc_crc32c compute it ---- */

static uint32_t crc_table[8][256];

static void
crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            crc_table[k][n] = (crc_table[k - 1][n] >> 8) ^ crc_table[0][crc_table[k - 1][n] & 0xff];
}

static uint32_t
crc32c_tables(const unsigned char *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    while (n >= 8) {
        crc ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        crc = crc_table[7][crc & 0xff] ^ crc_table[6][(crc >> 8) & 0xff] ^
              crc_table[5][(crc >> 16) & 0xff] ^ crc_table[4][crc >> 24] ^ crc_table[3][p[4]] ^
              crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_CRC_INSTRUCTION 1

__attribute__((target("sse4.2"))) static uint32_t
crc32c_instruction(const unsigned char *p, size_t n)
{
    uint64_t crc = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
        p += 8;
        n -= 8;
    }
    uint32_t c = (uint32_t)crc;
    while (n--)
        c = _mm_crc32_u8(c, *p++);
    return ~c;
}
#endif

static int use_instruction = 0;

static uint32_t
crc32c(const unsigned char *p, size_t n)
{
#ifdef HAVE_CRC_INSTRUCTION
    if (use_instruction)
        return crc32c_instruction(p, n);
#endif
    return crc32c_tables(p, n);
}

/* ---- murmur2, Kafka's default partitioner (aiokafka.partitioner.murmur2) ---- */

static uint32_t
murmur2(const unsigned char *data, size_t length)
{
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ (uint32_t)length;
    size_t i = 0;
    for (; i + 4 <= length; i += 4) {
        uint32_t k = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
                     (uint32_t)data[i + 3] << 24;
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (length & 3) {
    case 3:
        h ^= (uint32_t)data[i + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)data[i + 1] << 8;
        /* fall through */
    case 1:
        h ^= (uint32_t)data[i];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* ---- a growing byte buffer ---- */

typedef struct {
    unsigned char *data;
    size_t size, capacity;
} Buffer;

static int
reserve(Buffer *b, size_t more)
{
    if (more > SIZE_MAX / 2 - b->size) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->size + more <= b->capacity)
        return 0;
    size_t capacity = b->capacity ? b->capacity : 4096;
    while (capacity < b->size + more)
        capacity *= 2;
    unsigned char *data = PyMem_Realloc(b->data, capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

/* Kafka's signed varint (zigzag) of a non-negative value; `out` holds MAX_VARINT bytes. */
static size_t
varint(int64_t value, unsigned char *out)
{
    uint64_t v = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

static void
put_be64(unsigned char *p, int64_t value)
{
    uint64_t v = (uint64_t)value;
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static void
put_be32(unsigned char *p, int64_t value)
{
    uint32_t v = (uint32_t)value;
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void
put_be16(unsigned char *p, int64_t value)
{
    uint16_t v = (uint16_t)value;
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* ---- one record's body (everything after its length varint) ---- */

typedef struct {
    const char *data;
    Py_ssize_t size; /* -1: null */
} Field;

/* A key, value or header value: bytes, or None (null). */
static int
as_field(PyObject *item, const char *what, Field *field)
{
    if (item == Py_None) {
        field->data = NULL;
        field->size = -1;
        return 0;
    }
    if (!PyBytes_Check(item)) {
        PyErr_Format(PyExc_TypeError, "a record's %s must be bytes or None, not %.100s", what,
                     Py_TYPE(item)->tp_name);
        return -1;
    }
    field->data = PyBytes_AS_STRING(item);
    field->size = PyBytes_GET_SIZE(item);
    return 0;
}

static int
put_field(Buffer *b, Field f)
{
    unsigned char len[MAX_VARINT];
    size_t n = varint(f.size < 0 ? -1 : f.size, len);
    if (reserve(b, n + (f.size > 0 ? (size_t)f.size : 0)) < 0)
        return -1;
    memcpy(b->data + b->size, len, n);
    b->size += n;
    if (f.size > 0) {
        memcpy(b->data + b->size, f.data, (size_t)f.size);
        b->size += (size_t)f.size;
    }
    return 0;
}

/* The record's body into `body` (emptied first): attributes, timestamp delta (0: one
 * timestamp per batch), offset delta, key, value, headers. */
static int
record_body(Buffer *body, int64_t offset_delta, Field key, Field value, PyObject *headers)
{
    unsigned char tmp[MAX_VARINT];
    body->size = 0;
    if (reserve(body, 2 + MAX_VARINT) < 0)
        return -1;
    body->data[body->size++] = 0; /* attributes */
    body->data[body->size++] = 0; /* timestamp delta: varint 0 */
    size_t n = varint(offset_delta, tmp);
    memcpy(body->data + body->size, tmp, n);
    body->size += n;
    if (put_field(body, key) < 0 || put_field(body, value) < 0)
        return -1;
    PyObject *fast = PySequence_Fast(headers, "a record's headers must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    n = varint(count, tmp);
    if (reserve(body, n) < 0)
        goto fail;
    memcpy(body->data + body->size, tmp, n);
    body->size += n;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *header = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyTuple_Check(header) || PyTuple_GET_SIZE(header) != 2) {
            PyErr_SetString(PyExc_TypeError, "a header must be a (str, bytes) tuple");
            goto fail;
        }
        PyObject *name = PyTuple_GET_ITEM(header, 0);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "a header's name must be str");
            goto fail;
        }
        Py_ssize_t name_size;
        const char *name_data = PyUnicode_AsUTF8AndSize(name, &name_size);
        if (name_data == NULL)
            goto fail;
        Field header_value;
        if (as_field(PyTuple_GET_ITEM(header, 1), "header value", &header_value) < 0)
            goto fail;
        Field header_name = {name_data, name_size};
        if (put_field(body, header_name) < 0 || put_field(body, header_value) < 0)
            goto fail;
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
}

/* ---- an open batch per partition ---- */

typedef struct {
    Buffer buffer;     /* header space, then the records */
    PyObject *indexes; /* list of the records' positions in the chunk; NULL: none open */
    Py_ssize_t count;
} Open;

/* The header of a batch of `count` records, all at `timestamp`, with the producer
 * state aiokafka's builder starts with (-1, -1, 0) and no CRC yet (`seal` writes both). */
static void
write_header(unsigned char *h, size_t size, Py_ssize_t count, int64_t timestamp)
{
    put_be64(h, 0);                      /* BaseOffset: the broker sets it */
    put_be32(h + 8, (int64_t)size - 12); /* Length: what follows it */
    put_be32(h + 12, -1);                /* PartitionLeaderEpoch */
    h[16] = 2;                           /* Magic */
    put_be32(h + CRC_OFFSET, 0);
    put_be16(h + ATTRIBUTES_OFFSET, 0); /* no compression, CreateTime, not transactional */
    put_be32(h + 23, count - 1);        /* LastOffsetDelta */
    put_be64(h + 27, timestamp);        /* FirstTimestamp */
    put_be64(h + 35, timestamp);        /* MaxTimestamp */
    put_be64(h + PRODUCER_OFFSET, -1);  /* ProducerId */
    put_be16(h + 51, -1);               /* ProducerEpoch */
    put_be32(h + 53, 0);                /* BaseSequence */
    put_be32(h + 57, count);            /* Records count */
}

/* Close `open` into (partition, bytearray, indexes) appended to `out`. */
static int
emit(Open *open, long partition, int64_t timestamp, PyObject *out)
{
    write_header(open->buffer.data, open->buffer.size, open->count, timestamp);
    PyObject *batch = PyByteArray_FromStringAndSize((const char *)open->buffer.data,
                                                    (Py_ssize_t)open->buffer.size);
    if (batch == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(lNO)", partition, batch, open->indexes);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(out, item);
    Py_DECREF(item);
    if (failed)
        return -1;
    Py_CLEAR(open->indexes);
    open->buffer.size = 0;
    open->count = 0;
    return 0;
}

static int
start(Open *open)
{
    open->indexes = PyList_New(0);
    if (open->indexes == NULL)
        return -1;
    open->buffer.size = 0;
    if (reserve(&open->buffer, HEADER_SIZE) < 0)
        return -1;
    memset(open->buffer.data, 0, HEADER_SIZE);
    open->buffer.size = HEADER_SIZE;
    open->count = 0;
    return 0;
}

static PyObject *
fill(PyObject *module, PyObject *args)
{
    PyObject *records, *partitions_arg, *chosen_arg;
    Py_ssize_t batch_size;
    long long timestamp;
    if (!PyArg_ParseTuple(args, "OOOnL", &records, &partitions_arg, &chosen_arg, &batch_size,
                          &timestamp))
        return NULL;
    if (timestamp < 0) {
        PyErr_SetString(PyExc_ValueError, "the timestamp must not be negative");
        return NULL;
    }
    PyObject *out = NULL, *recs = NULL, *parts = NULL, *chosen = NULL;
    long *ids = NULL;
    Open *opens = NULL;
    Buffer body = {NULL, 0, 0};
    Py_ssize_t n_parts = 0;

    recs = PySequence_Fast(records, "records must be a sequence");
    parts = PySequence_Fast(partitions_arg, "partitions must be a sequence");
    if (recs == NULL || parts == NULL)
        goto done;
    n_parts = PySequence_Fast_GET_SIZE(parts);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(recs);
    if (n_parts < 1 || n_parts > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a topic has at least one partition");
        goto done;
    }
    if (chosen_arg != Py_None) {
        chosen = PySequence_Fast(chosen_arg, "chosen must be a sequence");
        if (chosen == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(chosen) != n) {
            PyErr_SetString(PyExc_ValueError, "one chosen partition position per record");
            goto done;
        }
    }
    ids = PyMem_Calloc((size_t)n_parts, sizeof(long));
    opens = PyMem_Calloc((size_t)n_parts, sizeof(Open));
    if (ids == NULL || opens == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t p = 0; p < n_parts; p++) {
        ids[p] = PyLong_AsLong(PySequence_Fast_GET_ITEM(parts, p));
        if (ids[p] == -1 && PyErr_Occurred())
            goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(recs, i);
        PyObject *key_obj = PyObject_GetAttrString(record, "key");
        PyObject *value_obj = key_obj ? PyObject_GetAttrString(record, "value") : NULL;
        PyObject *headers = value_obj ? PyObject_GetAttrString(record, "headers") : NULL;
        int failed = headers == NULL;
        Field key = {NULL, -1}, value = {NULL, -1};
        Py_ssize_t slot = 0;
        if (!failed)
            failed = as_field(key_obj, "key", &key) < 0 || as_field(value_obj, "value", &value) < 0;
        if (!failed) {
            if (chosen != NULL) {
                slot = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(chosen, i));
                if (slot == -1 && PyErr_Occurred())
                    failed = 1;
                else if (slot < 0 || slot >= n_parts) {
                    PyErr_SetString(PyExc_ValueError, "a chosen partition position is out of range");
                    failed = 1;
                }
            } else if (key.size < 0) {
                PyErr_SetString(PyExc_ValueError, "a null key needs a chosen partition");
                failed = 1;
            } else {
                slot = (Py_ssize_t)((murmur2((const unsigned char *)key.data, (size_t)key.size) &
                                     0x7FFFFFFFu) %
                                    (uint32_t)n_parts);
            }
        }
        Open *open = &opens[slot];
        /* Encoded for the open batch; encoded again (offset delta 0) if it starts a new one. */
        Py_ssize_t delta = open->indexes != NULL ? open->count : 0;
        if (!failed)
            failed = record_body(&body, delta, key, value, headers) < 0;
        unsigned char len[MAX_VARINT];
        size_t len_size = varint((int64_t)body.size, len);
        size_t required = len_size + body.size;
        /* aiokafka's rule: a record that would take the batch past batch_size starts the
         * next batch, unless the batch is empty (a record of any size fits an empty one). */
        if (!failed && delta > 0 && open->buffer.size + required > (size_t)batch_size)
            failed = emit(open, ids[slot], timestamp, out) < 0;
        if (!failed && open->indexes == NULL)
            failed = start(open) < 0;
        if (!failed && open->count != delta) {
            failed = record_body(&body, 0, key, value, headers) < 0;
            len_size = varint((int64_t)body.size, len);
            required = len_size + body.size;
        }
        Py_XDECREF(key_obj);
        Py_XDECREF(value_obj);
        Py_XDECREF(headers);
        if (failed)
            goto fail;
        if (reserve(&open->buffer, required) < 0)
            goto fail;
        memcpy(open->buffer.data + open->buffer.size, len, len_size);
        memcpy(open->buffer.data + open->buffer.size + len_size, body.data, body.size);
        open->buffer.size += required;
        open->count++;
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            goto fail;
        failed = PyList_Append(open->indexes, index);
        Py_DECREF(index);
        if (failed)
            goto fail;
    }
    for (Py_ssize_t p = 0; p < n_parts; p++)
        if (opens[p].indexes != NULL && opens[p].count > 0)
            if (emit(&opens[p], ids[p], timestamp, out) < 0)
                goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    if (opens != NULL) {
        for (Py_ssize_t p = 0; p < n_parts; p++) {
            Py_XDECREF(opens[p].indexes);
            PyMem_Free(opens[p].buffer.data);
        }
        PyMem_Free(opens);
    }
    PyMem_Free(ids);
    PyMem_Free(body.data);
    Py_XDECREF(recs);
    Py_XDECREF(parts);
    Py_XDECREF(chosen);
    return out;
}

static PyObject *
seal(PyObject *module, PyObject *args)
{
    PyObject *batch;
    long long producer_id;
    int producer_epoch, base_sequence;
    if (!PyArg_ParseTuple(args, "O!Lii", &PyByteArray_Type, &batch, &producer_id, &producer_epoch,
                          &base_sequence))
        return NULL;
    Py_ssize_t size = PyByteArray_GET_SIZE(batch);
    if (size < HEADER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "not a record batch");
        return NULL;
    }
    unsigned char *h = (unsigned char *)PyByteArray_AS_STRING(batch);
    put_be64(h + PRODUCER_OFFSET, producer_id);
    put_be16(h + 51, producer_epoch);
    put_be32(h + 53, base_sequence);
    put_be32(h + CRC_OFFSET, crc32c(h + ATTRIBUTES_OFFSET, (size_t)(size - ATTRIBUTES_OFFSET)));
    Py_RETURN_NONE;
}

static PyObject *
crc32c_py(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t crc = crc32c(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *
murmur2_py(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "murmur2 hashes bytes");
        return NULL;
    }
    return PyLong_FromUnsignedLong(
        murmur2((const unsigned char *)PyBytes_AS_STRING(arg), (size_t)PyBytes_GET_SIZE(arg)));
}

static PyObject *
set_crc_instruction(PyObject *module, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
#ifdef HAVE_CRC_INSTRUCTION
    use_instruction = on && __builtin_cpu_supports("sse4.2");
#else
    use_instruction = 0;
#endif
    return PyBool_FromLong(use_instruction);
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(records, partitions, chosen, batch_size, timestamp_ms) -> [(partition, batch, "
     "indexes)]"},
    {"seal", seal, METH_VARARGS, "seal(batch, producer_id, producer_epoch, base_sequence)"},
    {"crc32c", crc32c_py, METH_O, "CRC-32C of a buffer"},
    {"murmur2", murmur2_py, METH_O, "Kafka's murmur2 of bytes (unsigned)"},
    {"set_crc_instruction", set_crc_instruction, METH_O,
     "use the CPU's crc32 instruction if it has one (default); returns whether it is used"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "coordinator.kafka._recordbatch", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__recordbatch(void)
{
    crc_init();
#ifdef HAVE_CRC_INSTRUCTION
    __builtin_cpu_init();
    use_instruction = __builtin_cpu_supports("sse4.2");
#endif
    return PyModule_Create(&module_def);
}
