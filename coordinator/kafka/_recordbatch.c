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

/* Kafka's signed varint (zigzag) of a value; `out` holds MAX_VARINT bytes. */
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

static size_t
varint_size(int64_t value)
{
    unsigned char out[MAX_VARINT];
    return varint(value, out);
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

/* ---- one record ---- */

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

static size_t
field_size(Field f)
{
    return varint_size(f.size) + (f.size > 0 ? (size_t)f.size : 0);
}

static unsigned char *
put_field(unsigned char *out, Field f)
{
    out += varint(f.size, out);
    if (f.size > 0) {
        memcpy(out, f.data, (size_t)f.size);
        out += f.size;
    }
    return out;
}

/* A record as read from its attributes: key, value, and its headers checked and sized.
 * `objects` holds new references (key, value, headers as a list or tuple) to release. */
typedef struct {
    Field key, value;
    PyObject *objects[3];
    size_t headers_size; /* the header count's varint and every header */
} Record;

static void
release(Record *r)
{
    for (int i = 0; i < 3; i++)
        Py_CLEAR(r->objects[i]);
}

/* A header's name and value, checked. */
static int
read_header(PyObject *header, Field *name, Field *value)
{
    if (!PyTuple_Check(header) || PyTuple_GET_SIZE(header) != 2) {
        PyErr_SetString(PyExc_TypeError, "a header must be a (str, bytes) tuple");
        return -1;
    }
    PyObject *name_obj = PyTuple_GET_ITEM(header, 0);
    if (!PyUnicode_Check(name_obj)) {
        PyErr_SetString(PyExc_TypeError, "a header's name must be str");
        return -1;
    }
    name->data = PyUnicode_AsUTF8AndSize(name_obj, &name->size);
    if (name->data == NULL)
        return -1;
    return as_field(PyTuple_GET_ITEM(header, 1), "header value", value);
}

/* The attribute names, made once (PyObject_GetAttrString would make each per call). */
static PyObject *KEY, *VALUE, *HEADERS;

static int
read_record(PyObject *record, Record *r)
{
    PyObject *headers = NULL;
    r->objects[0] = PyObject_GetAttr(record, KEY);
    r->objects[1] = r->objects[0] ? PyObject_GetAttr(record, VALUE) : NULL;
    headers = r->objects[1] ? PyObject_GetAttr(record, HEADERS) : NULL;
    if (headers == NULL || as_field(r->objects[0], "key", &r->key) < 0 ||
        as_field(r->objects[1], "value", &r->value) < 0)
        goto fail;
    r->objects[2] = PySequence_Fast(headers, "a record's headers must be a sequence");
    Py_CLEAR(headers);
    if (r->objects[2] == NULL)
        goto fail;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(r->objects[2]);
    size_t size = varint_size(count);
    for (Py_ssize_t i = 0; i < count; i++) {
        Field name, value;
        if (read_header(PySequence_Fast_GET_ITEM(r->objects[2], i), &name, &value) < 0)
            goto fail;
        size += field_size(name) + field_size(value);
    }
    r->headers_size = size;
    return 0;
fail:
    Py_XDECREF(headers);
    release(r);
    return -1;
}

/* The record's body size: attributes, timestamp delta, offset delta, key, value, headers. */
static size_t
body_size(const Record *r, int64_t offset_delta)
{
    return 2 + varint_size(offset_delta) + field_size(r->key) + field_size(r->value) +
           r->headers_size;
}

/* The record (its length, then its body of `body` bytes) at `out`. The headers are read
 * again: a list can change between sizing and writing (a finalizer run by an allocation
 * in between), so nothing read then is trusted now, and a record whose size changed is
 * refused rather than written past its space. */
static int
write_record(unsigned char *out, const Record *r, int64_t offset_delta, size_t body)
{
    unsigned char *end = out + varint_size((int64_t)body) + body;
    out += varint((int64_t)body, out);
    *out++ = 0; /* attributes */
    *out++ = 0; /* timestamp delta: one timestamp per batch */
    out += varint(offset_delta, out);
    out = put_field(out, r->key);
    out = put_field(out, r->value);
    PyObject *headers = r->objects[2];
    Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
    size_t size = varint_size(count);
    Field name = {NULL, -1}, value = {NULL, -1};
    for (Py_ssize_t i = 0; i < count; i++) {
        if (read_header(PySequence_Fast_GET_ITEM(headers, i), &name, &value) < 0)
            return -1;
        size += field_size(name) + field_size(value);
    }
    if (size != r->headers_size || (size_t)(end - out) != size) {
        PyErr_SetString(PyExc_RuntimeError, "a record's headers changed while it was written");
        return -1;
    }
    out += varint(count, out);
    for (Py_ssize_t i = 0; i < count; i++) {
        /* checked just above, with no Python code run since */
        (void)read_header(PySequence_Fast_GET_ITEM(headers, i), &name, &value);
        out = put_field(out, name);
        out = put_field(out, value);
    }
    return 0;
}

/* ---- an open batch per partition, written in place in the bytearray it becomes ---- */

typedef struct {
    PyObject *batch;   /* bytearray: header space, then the records; NULL: none open */
    PyObject *indexes; /* the records' positions in the chunk */
    size_t size;       /* bytes written; the bytearray is larger until emitted */
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

static int
start(Open *open, size_t capacity)
{
    open->indexes = PyList_New(0);
    open->batch = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)capacity);
    if (open->indexes == NULL || open->batch == NULL)
        return -1;
    open->size = HEADER_SIZE;
    open->count = 0;
    return 0;
}

static int
reserve(Open *open, size_t more)
{
    size_t capacity = (size_t)PyByteArray_GET_SIZE(open->batch);
    if (open->size + more <= capacity)
        return 0;
    if (more > (size_t)PY_SSIZE_T_MAX / 2 - open->size) {
        PyErr_NoMemory();
        return -1;
    }
    capacity *= 2;
    if (capacity < open->size + more)
        capacity = open->size + more;
    return PyByteArray_Resize(open->batch, (Py_ssize_t)capacity);
}

/* Close `open` into (partition, bytearray, indexes) appended to `out`. */
static int
emit(Open *open, long partition, int64_t timestamp, PyObject *out)
{
    /* Shrinking a bytearray copies nothing unless it drops below half its allocation. */
    if (PyByteArray_Resize(open->batch, (Py_ssize_t)open->size) < 0)
        return -1;
    write_header((unsigned char *)PyByteArray_AS_STRING(open->batch), open->size, open->count,
                 timestamp);
    PyObject *item = Py_BuildValue("(lOO)", partition, open->batch, open->indexes);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(out, item);
    Py_DECREF(item);
    if (failed)
        return -1;
    Py_CLEAR(open->batch);
    Py_CLEAR(open->indexes);
    return 0;
}


/* The position (in the call's partitions) of record i: the caller's choice where given,
 * else the murmur2 of its key, as Kafka's default partitioner; -1 with an error set. */
static Py_ssize_t
partition_slot(PyObject *chosen, Py_ssize_t i, const Field *key, Py_ssize_t n_parts)
{
    if (chosen != NULL) {
        Py_ssize_t slot = PyLong_AsSsize_t(PyTuple_GET_ITEM(chosen, i));
        if (slot == -1 && PyErr_Occurred())
            return -1;
        if (slot < 0 || slot >= n_parts) {
            PyErr_SetString(PyExc_ValueError, "a chosen partition position is out of range");
            return -1;
        }
        return slot;
    }
    if (key->size < 0) {
        PyErr_SetString(PyExc_ValueError, "a null key needs a chosen partition");
        return -1;
    }
    return (Py_ssize_t)((murmur2((const unsigned char *)key->data, (size_t)key->size) &
                         0x7FFFFFFFu) %
                        (uint32_t)n_parts);
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
    if (timestamp < 0 || batch_size < 0) {
        PyErr_SetString(PyExc_ValueError, "the timestamp and batch size must not be negative");
        return NULL;
    }
    PyObject *out = NULL, *recs = NULL, *parts = NULL, *chosen = NULL;
    long *ids = NULL;
    Open *opens = NULL;
    Py_ssize_t n_parts = 0;
    Record r = {{NULL, -1}, {NULL, -1}, {NULL, NULL, NULL}, 0};

    /* Tuples of our own, not the caller's lists: reading a record, a partition or a chosen
     * position can run Python code (a property, __index__) that empties or shrinks those
     * lists, and the records must stay alive while their bytes are read. */
    recs = PySequence_Tuple(records);
    if (recs == NULL)
        goto done;
    parts = PySequence_Tuple(partitions_arg);
    if (parts == NULL)
        goto done;
    n_parts = PyTuple_GET_SIZE(parts);
    Py_ssize_t n = PyTuple_GET_SIZE(recs);
    if (n_parts < 1 || n_parts > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a topic has at least one partition");
        goto done;
    }
    if (chosen_arg != Py_None) {
        chosen = PySequence_Tuple(chosen_arg);
        if (chosen == NULL)
            goto done;
        if (PyTuple_GET_SIZE(chosen) != n) {
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
        ids[p] = PyLong_AsLong(PyTuple_GET_ITEM(parts, p));
        if (ids[p] == -1 && PyErr_Occurred())
            goto done;
    }
    /* A first allocation per batch: the chunk's share of a partition, within the limit. */
    size_t capacity = 16384;
    if ((size_t)batch_size < capacity)
        capacity = (size_t)batch_size;
    if (capacity < HEADER_SIZE)
        capacity = HEADER_SIZE;
    out = PyList_New(0);
    if (out == NULL)
        goto done;

    for (Py_ssize_t i = 0; i < n; i++) {
        if (read_record(PyTuple_GET_ITEM(recs, i), &r) < 0)
            goto fail;
        Py_ssize_t slot = partition_slot(chosen, i, &r.key, n_parts);
        if (slot < 0)
            goto fail;
        Open *open = &opens[slot];
        Py_ssize_t delta = open->batch != NULL ? open->count : 0;
        size_t body = body_size(&r, delta);
        size_t required = varint_size((int64_t)body) + body;
        /* aiokafka's rule (its compiled builder's, the one it uses where built): a record
         * that would bring the batch to batch_size or past it starts the next batch, unless
         * the batch is empty (a record of any size fits an empty one). */
        if (delta > 0 && open->size + required >= (size_t)batch_size) {
            if (emit(open, ids[slot], timestamp, out) < 0)
                goto fail;
            delta = 0;
            body = body_size(&r, 0);
            required = varint_size((int64_t)body) + body;
        }
        if (open->batch == NULL && start(open, capacity) < 0)
            goto fail;
        /* The batch's Length and the record's own are 32-bit. */
        if (required > (size_t)INT32_MAX - open->size) {
            PyErr_SetString(PyExc_ValueError, "a record batch cannot exceed 2 GiB");
            goto fail;
        }
        if (reserve(open, required) < 0)
            goto fail;
        if (write_record((unsigned char *)PyByteArray_AS_STRING(open->batch) + open->size, &r,
                         delta, body) < 0)
            goto fail;
        open->size += required;
        open->count++;
        release(&r);
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            goto fail;
        int failed = PyList_Append(open->indexes, index);
        Py_DECREF(index);
        if (failed)
            goto fail;
    }
    for (Py_ssize_t p = 0; p < n_parts; p++)
        if (opens[p].batch != NULL && emit(&opens[p], ids[p], timestamp, out) < 0)
            goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    release(&r);
    if (opens != NULL) {
        for (Py_ssize_t p = 0; p < n_parts; p++) {
            Py_XDECREF(opens[p].batch);
            Py_XDECREF(opens[p].indexes);
        }
        PyMem_Free(opens);
    }
    PyMem_Free(ids);
    Py_XDECREF(recs);
    Py_XDECREF(parts);
    Py_XDECREF(chosen);
    return out;
}

/* ---- the same batches from columns: the relay's claims, with no object per record ---- */

#define MAX_COLUMNS 8

/* A column header value: bytes, or str written as its UTF-8 (the relay's event ids), or
 * None: the record has no such header (a tree of one has no proof). Sets `*absent`. */
static int
column_field(PyObject *item, Field *field, int *absent)
{
    *absent = item == Py_None;
    if (*absent)
        return 0;
    if (PyUnicode_Check(item)) {
        field->data = PyUnicode_AsUTF8AndSize(item, &field->size);
        return field->data == NULL ? -1 : 0;
    }
    return as_field(item, "header value", field);
}

typedef struct {
    Field key, value;
    Field names[MAX_COLUMNS], values[MAX_COLUMNS];
    Py_ssize_t count;    /* headers present */
    size_t headers_size; /* the header count's varint and every header */
} Fields;

/* Record `i` of the columns. Every object read is held by the caller's tuples, and
 * nothing here runs Python code, so the fields stay valid until written. */
static int
read_fields(Py_ssize_t i, PyObject *keys, PyObject *values, const Field *names,
            PyObject *const *columns, Py_ssize_t n_columns, Fields *f)
{
    if (as_field(PyTuple_GET_ITEM(keys, i), "key", &f->key) < 0 ||
        as_field(PyTuple_GET_ITEM(values, i), "value", &f->value) < 0)
        return -1;
    f->count = 0;
    for (Py_ssize_t c = 0; c < n_columns; c++) {
        int absent;
        if (column_field(PyTuple_GET_ITEM(columns[c], i), &f->values[f->count], &absent) < 0)
            return -1;
        if (!absent)
            f->names[f->count++] = names[c];
    }
    size_t size = varint_size(f->count);
    for (Py_ssize_t h = 0; h < f->count; h++)
        size += field_size(f->names[h]) + field_size(f->values[h]);
    f->headers_size = size;
    return 0;
}

static size_t
fields_body_size(const Fields *f, int64_t offset_delta)
{
    return 2 + varint_size(offset_delta) + field_size(f->key) + field_size(f->value) +
           f->headers_size;
}

static void
write_fields(unsigned char *out, const Fields *f, int64_t offset_delta, size_t body)
{
    out += varint((int64_t)body, out);
    *out++ = 0; /* attributes */
    *out++ = 0; /* timestamp delta: one timestamp per batch */
    out += varint(offset_delta, out);
    out = put_field(out, f->key);
    out = put_field(out, f->value);
    out += varint(f->count, out);
    for (Py_ssize_t h = 0; h < f->count; h++) {
        out = put_field(out, f->names[h]);
        out = put_field(out, f->values[h]);
    }
}

static PyObject *
fill_columns(PyObject *module, PyObject *args)
{
    PyObject *keys_arg, *values_arg, *names_arg, *columns_arg, *partitions_arg, *chosen_arg;
    Py_ssize_t batch_size;
    long long timestamp;
    if (!PyArg_ParseTuple(args, "OOOOOOnL", &keys_arg, &values_arg, &names_arg, &columns_arg,
                          &partitions_arg, &chosen_arg, &batch_size, &timestamp))
        return NULL;
    if (timestamp < 0 || batch_size < 0) {
        PyErr_SetString(PyExc_ValueError, "the timestamp and batch size must not be negative");
        return NULL;
    }
    PyObject *out = NULL, *keys = NULL, *values = NULL, *names = NULL, *parts = NULL,
             *chosen = NULL, *columns_tuple = NULL;
    PyObject *columns[MAX_COLUMNS] = {NULL};
    Field name_fields[MAX_COLUMNS];
    Py_ssize_t n_columns = 0;
    long *ids = NULL;
    Open *opens = NULL;
    Py_ssize_t n_parts = 0;

    /* Tuples of our own (see `fill`): what they hold stays alive and unchanged. */
    keys = PySequence_Tuple(keys_arg);
    values = keys ? PySequence_Tuple(values_arg) : NULL;
    names = values ? PySequence_Tuple(names_arg) : NULL;
    columns_tuple = names ? PySequence_Tuple(columns_arg) : NULL;
    parts = columns_tuple ? PySequence_Tuple(partitions_arg) : NULL;
    if (parts == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    n_columns = PyTuple_GET_SIZE(columns_tuple);
    if (PyTuple_GET_SIZE(values) != n || PyTuple_GET_SIZE(names) != n_columns) {
        PyErr_SetString(PyExc_ValueError, "one value per key and one name per header column");
        goto done;
    }
    if (n_columns > MAX_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "at most 8 header columns");
        goto done;
    }
    for (Py_ssize_t c = 0; c < n_columns; c++) {
        PyObject *name = PyTuple_GET_ITEM(names, c);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "a header's name must be str");
            goto done;
        }
        name_fields[c].data = PyUnicode_AsUTF8AndSize(name, &name_fields[c].size);
        if (name_fields[c].data == NULL)
            goto done;
        columns[c] = PySequence_Tuple(PyTuple_GET_ITEM(columns_tuple, c));
        if (columns[c] == NULL)
            goto done;
        if (PyTuple_GET_SIZE(columns[c]) != n) {
            PyErr_SetString(PyExc_ValueError, "one header value (or None) per record a column");
            goto done;
        }
    }
    n_parts = PyTuple_GET_SIZE(parts);
    if (n_parts < 1 || n_parts > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "a topic has at least one partition");
        goto done;
    }
    if (chosen_arg != Py_None) {
        chosen = PySequence_Tuple(chosen_arg);
        if (chosen == NULL)
            goto done;
        if (PyTuple_GET_SIZE(chosen) != n) {
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
        ids[p] = PyLong_AsLong(PyTuple_GET_ITEM(parts, p));
        if (ids[p] == -1 && PyErr_Occurred())
            goto done;
    }
    size_t capacity = 16384;
    if ((size_t)batch_size < capacity)
        capacity = (size_t)batch_size;
    if (capacity < HEADER_SIZE)
        capacity = HEADER_SIZE;
    out = PyList_New(0);
    if (out == NULL)
        goto done;

    for (Py_ssize_t i = 0; i < n; i++) {
        Fields f;
        if (read_fields(i, keys, values, name_fields, columns, n_columns, &f) < 0)
            goto fail;
        Py_ssize_t slot = partition_slot(chosen, i, &f.key, n_parts);
        if (slot < 0)
            goto fail;
        Open *open = &opens[slot];
        Py_ssize_t delta = open->batch != NULL ? open->count : 0;
        size_t body = fields_body_size(&f, delta);
        size_t required = varint_size((int64_t)body) + body;
        /* `fill`'s rule, aiokafka's. */
        if (delta > 0 && open->size + required >= (size_t)batch_size) {
            if (emit(open, ids[slot], timestamp, out) < 0)
                goto fail;
            delta = 0;
            body = fields_body_size(&f, 0);
            required = varint_size((int64_t)body) + body;
        }
        if (open->batch == NULL && start(open, capacity) < 0)
            goto fail;
        if (required > (size_t)INT32_MAX - open->size) {
            PyErr_SetString(PyExc_ValueError, "a record batch cannot exceed 2 GiB");
            goto fail;
        }
        if (reserve(open, required) < 0)
            goto fail;
        write_fields((unsigned char *)PyByteArray_AS_STRING(open->batch) + open->size, &f, delta,
                     body);
        open->size += required;
        open->count++;
        PyObject *index = PyLong_FromSsize_t(i);
        if (index == NULL)
            goto fail;
        int failed = PyList_Append(open->indexes, index);
        Py_DECREF(index);
        if (failed)
            goto fail;
    }
    for (Py_ssize_t p = 0; p < n_parts; p++)
        if (opens[p].batch != NULL && emit(&opens[p], ids[p], timestamp, out) < 0)
            goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    if (opens != NULL) {
        for (Py_ssize_t p = 0; p < n_parts; p++) {
            Py_XDECREF(opens[p].batch);
            Py_XDECREF(opens[p].indexes);
        }
        PyMem_Free(opens);
    }
    PyMem_Free(ids);
    for (Py_ssize_t c = 0; c < MAX_COLUMNS; c++)
        Py_XDECREF(columns[c]);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(names);
    Py_XDECREF(columns_tuple);
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
    /* The epoch is an int16 on the wire; aiokafka's builder refuses one out of range. */
    if (producer_epoch < INT16_MIN || producer_epoch > INT16_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the producer epoch is a 16-bit signed integer");
        return NULL;
    }
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

static PyObject *
crc_instruction(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(use_instruction);
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS,
     "fill(records, partitions, chosen, batch_size, timestamp_ms) -> [(partition, batch, "
     "indexes)]"},
    {"fill_columns", fill_columns, METH_VARARGS,
     "fill_columns(keys, values, header_names, header_columns, partitions, chosen, batch_size, "
     "timestamp_ms) -> [(partition, batch, indexes)]"},
    {"seal", seal, METH_VARARGS, "seal(batch, producer_id, producer_epoch, base_sequence)"},
    {"crc32c", crc32c_py, METH_O, "CRC-32C of a buffer"},
    {"murmur2", murmur2_py, METH_O, "Kafka's murmur2 of bytes (unsigned)"},
    {"set_crc_instruction", set_crc_instruction, METH_O,
     "use the CPU's crc32 instruction if it has one (default); returns whether it is used"},
    {"crc_instruction", crc_instruction, METH_NOARGS,
     "whether the CRC-32C runs on the CPU's crc32 instruction"},
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
    KEY = PyUnicode_InternFromString("key");
    VALUE = PyUnicode_InternFromString("value");
    HEADERS = PyUnicode_InternFromString("headers");
    if (KEY == NULL || VALUE == NULL || HEADERS == NULL)
        return NULL;
    return PyModule_Create(&module_def);
}
