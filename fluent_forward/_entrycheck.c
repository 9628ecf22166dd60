/* The relay's entry check in C: one pass over packed Forward entries, no object built.
 *
 *     count(data: bytes, max_entries: int) -> int | None
 *
 * The number of entries if every one is valid as it is, else None: "ask the Python
 * check" (fluent_forward.fastpath), which, entry by entry, decides everything else and
 * names what is wrong. So this walk may refuse anything, but must accept only what
 * entries._validate_slow takes unchanged (tests/unit/test_entrycheck.py holds it to
 * that, on generated and mutated input):
 *
 *   - each entry is [time, record] or [[time, metadata], record], as a fixarray of 2;
 *   - a time is an unsigned integer of at most 32 bits (positive fixint, uint8/16/32)
 *     or an EventTime (fixext 8 of type 0) whose nanoseconds are below 1e9;
 *   - a record and a metadata are maps; every map, at any depth, has str or bin keys
 *     (the decoder's strict_map_key);
 *   - no ext of a negative type anywhere (Timestamps and reserved types: the Python
 *     check decides), no 0xc1, nothing cut short, nesting at most MAX_DEPTH deep.
 *
 * Anything else valid (a float or Timestamp time to normalise, an ext-8 EventTime, a
 * signed integer time) is left to Python too: rare, and never wrongly accepted.
 *
 * The input comes from enclaves (the trust boundary): every read is bounds-checked
 * through need(), lengths are 64-bit, and the walk is a loop with a fixed stack, so no
 * input can make it read out of bounds or recurse. It holds no Python object while it
 * runs, so it releases the GIL (the spool's commit thread runs meanwhile).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Deeper records are not refused, only left to the Python check. */
#define MAX_DEPTH 32
#define BILLION 1000000000u

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Cursor;

static inline int need(const Cursor *c, uint64_t n) {
    return (uint64_t)(c->end - c->p) >= n;
}

static inline uint64_t be(const uint8_t *p, int width) {
    uint64_t v = 0;
    for (int i = 0; i < width; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* One complete value (a container with all it holds): 1 if valid, 0 if not sure. */
static int skip_value(Cursor *c) {
    uint64_t left[MAX_DEPTH]; /* items still to read in each open container */
    uint8_t is_map[MAX_DEPTH];
    int depth = 0;
    int want_key = 0;
    for (;;) {
        if (!need(c, 1)) {
            return 0;
        }
        uint8_t b = *c->p++;
        uint64_t skip = 0;  /* payload bytes after the header */
        int width = 0;      /* bytes of a length field */
        uint64_t items = 0; /* a container's elements (pairs for a map) */
        int container = 0;  /* 1: array, 2: map */
        int ext = 0;        /* an ext: a type byte follows the length */
        if (want_key && !((b >= 0xa0 && b <= 0xbf) || b == 0xd9 || b == 0xda || b == 0xdb
                          || b == 0xc4 || b == 0xc5 || b == 0xc6)) {
            return 0; /* only str and bin keys */
        }
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: the byte is the value */
        } else if (b <= 0x8f) {
            container = 2;
            items = b & 0x0f;
        } else if (b <= 0x9f) {
            container = 1;
            items = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: width = 1; break;           /* bin8, str8 */
            case 0xc5: case 0xda: width = 2; break;           /* bin16, str16 */
            case 0xc6: case 0xdb: width = 4; break;           /* bin32, str32 */
            case 0xc7: width = 1; ext = 1; break;             /* ext8 */
            case 0xc8: width = 2; ext = 1; break;             /* ext16 */
            case 0xc9: width = 4; ext = 1; break;             /* ext32 */
            case 0xca: skip = 4; break;                       /* float32 */
            case 0xcb: skip = 8; break;                       /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;            /* uint8, int8 */
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 1; ext = 1; break;              /* fixext 1 .. 16 */
            case 0xd5: skip = 2; ext = 1; break;
            case 0xd6: skip = 4; ext = 1; break;
            case 0xd7: skip = 8; ext = 1; break;
            case 0xd8: skip = 16; ext = 1; break;
            case 0xdc: container = 1; width = 2; break;       /* array16 */
            case 0xdd: container = 1; width = 4; break;       /* array32 */
            case 0xde: container = 2; width = 2; break;       /* map16 */
            case 0xdf: container = 2; width = 4; break;       /* map32 */
            default: return 0;                                /* 0xc1: never used */
            }
        }
        if (width) {
            if (!need(c, (uint64_t)width)) {
                return 0;
            }
            uint64_t n = be(c->p, width);
            c->p += width;
            if (container) {
                items = n;
            } else {
                skip = n;
            }
        }
        if (ext) {
            if (!need(c, 1) || (int8_t)*c->p < 0) {
                return 0; /* a negative type: a Timestamp or reserved */
            }
            c->p += 1;
        }
        if (!need(c, skip)) {
            return 0;
        }
        c->p += skip;
        if (container && items) {
            if (depth == MAX_DEPTH) {
                return 0;
            }
            left[depth] = container == 2 ? 2 * items : items;
            is_map[depth] = container == 2;
            depth++;
            want_key = container == 2;
            continue;
        }
        /* One item complete: close every container it completes. */
        while (depth > 0 && --left[depth - 1] == 0) {
            depth--;
        }
        if (depth == 0) {
            return 1;
        }
        want_key = is_map[depth - 1] && left[depth - 1] % 2 == 0;
    }
}

static inline int is_map_header(const Cursor *c) {
    if (!need(c, 1)) {
        return 0;
    }
    uint8_t b = *c->p;
    return (b >= 0x80 && b <= 0x8f) || b == 0xde || b == 0xdf;
}

/* An unsigned time of at most 32 bits, or an EventTime with nanoseconds below 1e9. */
static int skip_time(Cursor *c) {
    if (!need(c, 1)) {
        return 0;
    }
    uint8_t b = *c->p++;
    if (b <= 0x7f) {
        return 1;
    }
    uint64_t size;
    switch (b) {
    case 0xcc: size = 1; break;
    case 0xcd: size = 2; break;
    case 0xce: size = 4; break;
    case 0xd7: /* fixext 8: type 0, then seconds and nanoseconds, big-endian */
        if (!need(c, 9) || c->p[0] != 0 || be(c->p + 5, 4) >= BILLION) {
            return 0;
        }
        c->p += 9;
        return 1;
    default:
        return 0;
    }
    if (!need(c, size)) {
        return 0;
    }
    c->p += size;
    return 1;
}

static int skip_entry(Cursor *c) {
    if (!need(c, 2) || c->p[0] != 0x92) {
        return 0;
    }
    c->p += 1;
    if (c->p[0] == 0x92) { /* [[time, metadata], record] */
        c->p += 1;
        if (!skip_time(c) || !is_map_header(c) || !skip_value(c)) {
            return 0;
        }
    } else if (!skip_time(c)) {
        return 0;
    }
    return is_map_header(c) && skip_value(c);
}

static PyObject *count(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "count(data, max_entries)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) { /* immutable while the GIL is released */
        Py_RETURN_NONE;
    }
    Py_ssize_t max_entries = PyLong_AsSsize_t(args[1]);
    if (max_entries == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Cursor c = {(const uint8_t *)PyBytes_AS_STRING(args[0]), NULL};
    c.end = c.p + PyBytes_GET_SIZE(args[0]);
    Py_ssize_t n = 0;
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    while (c.p < c.end) {
        if (n >= max_entries || !skip_entry(&c)) {
            ok = 0;
            break;
        }
        n++;
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(data, max_entries) -> the number of entries if all are valid as they are, "
     "else None (the Python check decides)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fluent_forward._entrycheck",
    "The relay's entry check in C (see fluent_forward.fastpath).", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__entrycheck(void) {
    return PyModuleDef_Init(&module);
}
