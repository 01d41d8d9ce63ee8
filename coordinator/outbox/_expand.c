/*
 * coordinator.outbox._expand: one outbox batch's records (ids, keys, values) in one call.
 *
 * `expand` is the rule path of `coordinator.outbox.events.BatchEncoder` for a batch whose
 * per-event values were validated and whose template was cut: each event's id text
 * (`event_id_texts`), record key (`type:entity`, UTF-8) and value
 * (`schemas.event_json.EventTemplate.render`), byte for byte
 * (tests/test_outbox_expand.py compares them). An entity or subject that is not plain
 * ASCII free of what JSON escapes is escaped by the `escape` callable given
 * (`json.encoder.encode_basestring`, what `render` uses), so only the common case is
 * done here. The Python code stays the reference and the fallback where this module did
 * not build (setup.py, optional).
 *
 * What it saves is the Python per event: two f-strings, a format, an escape call and two
 * encodes, ~0.4 us of the signed relay's ~2.3 us an event.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define HEX_DIGITS 8

static const char HEX[] = "0123456789abcdef";

/* A str that JSON carries as it is: ASCII, no quote, backslash or control character. */
static int
plain(PyObject *text)
{
    if (!PyUnicode_IS_ASCII(text))
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] == '"' || p[i] == '\\')
            return 0;
    return 1;
}

/* The JSON string of `text` (quotes included) as UTF-8: `*data`/`*size` point into `text`
 * itself when it is plain (`*quote` 1: the caller writes the quotes), else into a new
 * object `*owned` (the escape's result, quotes included) that the caller releases. */
static int
json_string(PyObject *text, PyObject *escape, const char **data, Py_ssize_t *size, int *quote,
            PyObject **owned)
{
    *owned = NULL;
    /* Exactly str: a subclass could format itself otherwise in the Python rule. */
    if (!PyUnicode_CheckExact(text)) {
        PyErr_Format(PyExc_TypeError, "an entity id or subject must be str, not %.100s",
                     Py_TYPE(text)->tp_name);
        return -1;
    }
    if (plain(text)) {
        *data = (const char *)PyUnicode_1BYTE_DATA(text);
        *size = PyUnicode_GET_LENGTH(text);
        *quote = 1;
        return 0;
    }
    PyObject *escaped = PyObject_CallOneArg(escape, text);
    if (escaped == NULL)
        return -1;
    if (!PyUnicode_Check(escaped)) {
        Py_DECREF(escaped);
        PyErr_SetString(PyExc_TypeError, "escape must return str");
        return -1;
    }
    *data = PyUnicode_AsUTF8AndSize(escaped, size);
    if (*data == NULL) {
        Py_DECREF(escaped);
        return -1;
    }
    *owned = escaped;
    *quote = 0;
    return 0;
}

static int
bytes_arg(PyObject *item, const char *what, const char **data, Py_ssize_t *size)
{
    if (!PyBytes_Check(item)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return -1;
    }
    *data = PyBytes_AS_STRING(item);
    *size = PyBytes_GET_SIZE(item);
    return 0;
}

/* Sizes add up without overflow (each part is an object's size, so far below the limit,
 * but their sum is checked all the same). */
static int
add(Py_ssize_t *total, Py_ssize_t part)
{
    if (part < 0 || *total > PY_SSIZE_T_MAX - part) {
        PyErr_NoMemory();
        return -1;
    }
    *total += part;
    return 0;
}

static PyObject *
expand(PyObject *module, PyObject *args)
{
    PyObject *id_prefix, *key_prefix_obj, *entities_arg, *subjects_arg, *escape;
    PyObject *pieces_obj[4];
    long long first;
    if (!PyArg_ParseTuple(args, "ULOOOOOOOO", &id_prefix, &first, &key_prefix_obj, &entities_arg,
                          &subjects_arg, &pieces_obj[0], &pieces_obj[1], &pieces_obj[2],
                          &pieces_obj[3], &escape))
        return NULL;
    if (!PyUnicode_IS_ASCII(id_prefix)) {
        PyErr_SetString(PyExc_ValueError, "the event id prefix must be ASCII");
        return NULL;
    }
    const char *key_prefix, *pieces[4];
    Py_ssize_t key_prefix_size, piece_sizes[4];
    if (bytes_arg(key_prefix_obj, "the key prefix", &key_prefix, &key_prefix_size) < 0)
        return NULL;
    for (int i = 0; i < 4; i++)
        if (bytes_arg(pieces_obj[i], "a template piece", &pieces[i], &piece_sizes[i]) < 0)
            return NULL;
    const char *id_chars = (const char *)PyUnicode_1BYTE_DATA(id_prefix);
    Py_ssize_t id_prefix_size = PyUnicode_GET_LENGTH(id_prefix);
    if (id_prefix_size > PY_SSIZE_T_MAX / 2) {
        PyErr_NoMemory();
        return NULL;
    }

    PyObject *ids = NULL, *keys = NULL, *values = NULL, *entities = NULL, *subjects = NULL,
             *result = NULL;
    /* Tuples of our own: the escape callable may run any Python code. */
    entities = PySequence_Tuple(entities_arg);
    subjects = entities ? PySequence_Tuple(subjects_arg) : NULL;
    if (subjects == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(entities);
    if (PyTuple_GET_SIZE(subjects) != n) {
        PyErr_SetString(PyExc_ValueError, "one subject (or None) per entity");
        goto done;
    }
    ids = PyList_New(n);
    keys = ids ? PyList_New(n) : NULL;
    values = keys ? PyList_New(n) : NULL;
    if (values == NULL)
        goto done;

    for (Py_ssize_t i = 0; i < n; i++) {
        /* The id: the prefix and the low 32 bits of first + i in 8 hex digits, as
         * `f"{prefix}{(first + n) & 0xFFFFFFFF:08x}"` (two's complement below zero). */
        uint32_t number = (uint32_t)((uint64_t)first + (uint64_t)i);
        PyObject *id = PyUnicode_New(id_prefix_size + HEX_DIGITS, 127);
        if (id == NULL)
            goto done;
        char *id_out = (char *)PyUnicode_1BYTE_DATA(id);
        memcpy(id_out, id_chars, (size_t)id_prefix_size);
        for (int d = 0; d < HEX_DIGITS; d++)
            id_out[id_prefix_size + d] = HEX[(number >> (28 - 4 * d)) & 15];
        PyList_SET_ITEM(ids, i, id);

        PyObject *entity = PyTuple_GET_ITEM(entities, i), *subject = PyTuple_GET_ITEM(subjects, i);
        const char *entity_json, *subject_json = "null";
        Py_ssize_t entity_size, subject_size = 4;
        int entity_quote, subject_quote = 0;
        PyObject *entity_owned = NULL, *subject_owned = NULL;
        if (json_string(entity, escape, &entity_json, &entity_size, &entity_quote,
                        &entity_owned) < 0)
            goto done;
        if (subject != Py_None && json_string(subject, escape, &subject_json, &subject_size,
                                              &subject_quote, &subject_owned) < 0) {
            Py_XDECREF(entity_owned);
            goto done;
        }

        /* The key: the prefix, then the entity id's UTF-8. */
        const char *entity_utf8;
        Py_ssize_t entity_utf8_size;
        entity_utf8 = PyUnicode_AsUTF8AndSize(entity, &entity_utf8_size);
        Py_ssize_t key_size = key_prefix_size, value_size = 0;
        int failed = entity_utf8 == NULL || add(&key_size, entity_utf8_size) < 0;
        /* head "id" middle entity tail subject end */
        failed = failed || add(&value_size, piece_sizes[0]) < 0 ||
                 add(&value_size, id_prefix_size + HEX_DIGITS + 2) < 0 ||
                 add(&value_size, piece_sizes[1]) < 0 ||
                 add(&value_size, entity_size + 2 * entity_quote) < 0 ||
                 add(&value_size, piece_sizes[2]) < 0 ||
                 add(&value_size, subject_size + 2 * subject_quote) < 0 ||
                 add(&value_size, piece_sizes[3]) < 0;
        PyObject *key = failed ? NULL : PyBytes_FromStringAndSize(NULL, key_size);
        PyObject *value = key == NULL ? NULL : PyBytes_FromStringAndSize(NULL, value_size);
        if (value == NULL) {
            Py_XDECREF(key);
            Py_XDECREF(entity_owned);
            Py_XDECREF(subject_owned);
            goto done;
        }
        char *k = PyBytes_AS_STRING(key);
        memcpy(k, key_prefix, (size_t)key_prefix_size);
        memcpy(k + key_prefix_size, entity_utf8, (size_t)entity_utf8_size);
        PyList_SET_ITEM(keys, i, key);

        char *v = PyBytes_AS_STRING(value);
        memcpy(v, pieces[0], (size_t)piece_sizes[0]);
        v += piece_sizes[0];
        *v++ = '"';
        memcpy(v, id_out, (size_t)(id_prefix_size + HEX_DIGITS));
        v += id_prefix_size + HEX_DIGITS;
        *v++ = '"';
        memcpy(v, pieces[1], (size_t)piece_sizes[1]);
        v += piece_sizes[1];
        if (entity_quote)
            *v++ = '"';
        memcpy(v, entity_json, (size_t)entity_size);
        v += entity_size;
        if (entity_quote)
            *v++ = '"';
        memcpy(v, pieces[2], (size_t)piece_sizes[2]);
        v += piece_sizes[2];
        if (subject_quote)
            *v++ = '"';
        memcpy(v, subject_json, (size_t)subject_size);
        v += subject_size;
        if (subject_quote)
            *v++ = '"';
        memcpy(v, pieces[3], (size_t)piece_sizes[3]);
        PyList_SET_ITEM(values, i, value);
        Py_XDECREF(entity_owned);
        Py_XDECREF(subject_owned);
    }
    result = PyTuple_Pack(3, ids, keys, values);
done:
    Py_XDECREF(ids);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    Py_XDECREF(entities);
    Py_XDECREF(subjects);
    return result;
}

static PyMethodDef methods[] = {
    {"expand", expand, METH_VARARGS,
     "expand(id_prefix, first, key_prefix, entities, subjects, head, middle, tail, end, "
     "escape) -> (ids, keys, values)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "coordinator.outbox._expand", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__expand(void)
{
    return PyModule_Create(&module_def);
}
