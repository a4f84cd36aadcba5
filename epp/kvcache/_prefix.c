/* The approximate prefix index's two hot loops in C: chained block hashing and the per-endpoint LRU.
 *
 * Why C: with a 16 KB prompt (256 blocks of 64 bytes) the Python versions cost 29 us to hash the
 * blocks (one xxhash call, one slice and one append per block) and 24 us (all blocks held) to 57 us
 * (all new, evicting as many) to record them in a dict-ordered LRU (delete + reinsert per block): half
 * of epp's in-process work per request. Here: 5 us to hash, 4 us / 17 us to record (CPU time, best of
 * 7 x 2,000 calls, this 2-core VM). The Python versions stay in prefix_index.py as the reference and
 * the fallback; tests/unit/test_prefix_native.py holds the two to identical results.
 *
 * block_keys: XXH64 (the xxhash specification, little-endian reads), each block hashed with the
 * previous block's hash as its seed, exactly as python-xxhash's xxh64_intdigest(block, seed).
 *
 * LRU: a set of uint64 keys with a recency order and a capacity: an open-addressing table (linear
 * probing, backward-shift deletion, load <= 1/2) of indexes into a node pool whose nodes form a
 * doubly linked list, most recent first. Every operation is O(1) but match_run (O(log n) probes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- XXH64 */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t xround(uint64_t acc, uint64_t in) {
    acc += in * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t xmerge(uint64_t acc, uint64_t v) {
    acc ^= xround(0, v);
    return acc * P1 + P4;
}

static uint64_t xxh64(const unsigned char *p, size_t len, uint64_t seed) {
    const unsigned char *end = p + len;
    uint64_t h;
    if (len >= 32) {
        const unsigned char *limit = end - 32;
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        do {
            v1 = xround(v1, rd64(p));
            v2 = xround(v2, rd64(p + 8));
            v3 = xround(v3, rd64(p + 16));
            v4 = xround(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xmerge(h, v1);
        h = xmerge(h, v2);
        h = xmerge(h, v3);
        h = xmerge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xround(0, rd64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

static PyObject *py_block_keys(PyObject *self, PyObject *args) {
    unsigned long long seed;
    Py_buffer data;
    Py_ssize_t block, max_blocks;
    int partial = 0;
    if (!PyArg_ParseTuple(args, "Ky*nn|p", &seed, &data, &block, &max_blocks, &partial))
        return NULL;
    if (block <= 0 || max_blocks < 0) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "block size must be > 0 and max_blocks >= 0");
        return NULL;
    }
    /* partial: a trailing partial block gets a key too (hashed as the shorter block it is) */
    Py_ssize_t n = partial ? (data.len + block - 1) / block : data.len / block;
    if (n > max_blocks)
        n = max_blocks;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)data.buf;
    uint64_t h = seed;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t left = data.len - i * block;
        h = xxh64(p + i * block, (size_t)(left < block ? left : block), h);
        PyObject *v = PyLong_FromUnsignedLongLong(h);
        if (v == NULL) {
            Py_DECREF(out);
            PyBuffer_Release(&data);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    PyBuffer_Release(&data);
    return out;
}

static PyObject *py_xxh64(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &data, &seed))
        return NULL;
    uint64_t h = xxh64((const unsigned char *)data.buf, (size_t)data.len, seed);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(h);
}

/* ---------------------------------------------------------------- LRU set */

#define NIL (-1)

typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity;   /* entries kept; the least recent beyond it are evicted */
    Py_ssize_t size;
    Py_ssize_t pool;       /* nodes allocated */
    Py_ssize_t free_head;  /* free node list, through next[] */
    Py_ssize_t head, tail; /* most and least recent */
    uint64_t *keys;
    Py_ssize_t *prev, *next;
    Py_ssize_t *table;     /* node index or NIL */
    size_t mask;           /* table size - 1 (a power of two) */
} LRU;

static inline size_t slot_of(uint64_t key, size_t mask) {
    /* keys are xxh64 values (uniform); mixing the high half in still guards against sequential keys */
    return (size_t)(key ^ (key >> 32)) & mask;
}

static Py_ssize_t find(LRU *s, uint64_t key) {
    size_t i = slot_of(key, s->mask);
    for (;;) {
        Py_ssize_t n = s->table[i];
        if (n == NIL)
            return NIL;
        if (s->keys[n] == key)
            return n;
        i = (i + 1) & s->mask;
    }
}

static void table_put(LRU *s, Py_ssize_t node) {
    size_t i = slot_of(s->keys[node], s->mask);
    while (s->table[i] != NIL)
        i = (i + 1) & s->mask;
    s->table[i] = node;
}

static void table_del(LRU *s, uint64_t key) {
    size_t i = slot_of(key, s->mask);
    while (s->table[i] == NIL || s->keys[s->table[i]] != key)
        i = (i + 1) & s->mask;
    /* backward-shift deletion: keep every later entry of the probe run reachable from its home */
    size_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        Py_ssize_t n = s->table[j];
        if (n == NIL)
            break;
        size_t home = slot_of(s->keys[n], s->mask);
        /* n may move to i when its home is not cyclically in (i, j] */
        int between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            s->table[i] = n;
            i = j;
        }
    }
    s->table[i] = NIL;
}

static int grow_table(LRU *s, size_t want_slots) {
    size_t n = 16;
    while (n < want_slots)
        n <<= 1;
    if (n - 1 == s->mask && s->table != NULL)
        return 0;
    Py_ssize_t *t = PyMem_Malloc(n * sizeof(Py_ssize_t));
    if (t == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        t[i] = NIL;
    PyMem_Free(s->table);
    s->table = t;
    s->mask = n - 1;
    for (Py_ssize_t node = s->head; node != NIL; node = s->next[node])
        table_put(s, node);
    return 0;
}

static int grow_pool(LRU *s) {
    Py_ssize_t want = s->pool ? s->pool * 2 : 64;
    uint64_t *k = PyMem_Realloc(s->keys, want * sizeof(uint64_t));
    if (k == NULL) goto nomem;
    s->keys = k;
    Py_ssize_t *p = PyMem_Realloc(s->prev, want * sizeof(Py_ssize_t));
    if (p == NULL) goto nomem;
    s->prev = p;
    Py_ssize_t *x = PyMem_Realloc(s->next, want * sizeof(Py_ssize_t));
    if (x == NULL) goto nomem;
    s->next = x;
    for (Py_ssize_t i = want - 1; i >= s->pool; i--) {
        s->next[i] = s->free_head;
        s->free_head = i;
    }
    s->pool = want;
    if ((size_t)want * 2 > s->mask + 1)
        return grow_table(s, (size_t)want * 2);
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static inline void unlink_node(LRU *s, Py_ssize_t n) {
    Py_ssize_t p = s->prev[n], x = s->next[n];
    if (p != NIL) s->next[p] = x; else s->head = x;
    if (x != NIL) s->prev[x] = p; else s->tail = p;
}

static inline void push_front(LRU *s, Py_ssize_t n) {
    s->prev[n] = NIL;
    s->next[n] = s->head;
    if (s->head != NIL) s->prev[s->head] = n; else s->tail = n;
    s->head = n;
}

static void evict_tail(LRU *s) {
    Py_ssize_t n = s->tail;
    unlink_node(s, n);
    table_del(s, s->keys[n]);
    s->next[n] = s->free_head;
    s->free_head = n;
    s->size--;
}

/* make key the most recent, inserting it when absent */
static int touch(LRU *s, uint64_t key) {
    Py_ssize_t n = find(s, key);
    if (n != NIL) {
        if (s->head != n) {
            unlink_node(s, n);
            push_front(s, n);
        }
        return 0;
    }
    if (s->free_head == NIL && grow_pool(s) < 0)
        return -1;
    n = s->free_head;
    s->free_head = s->next[n];
    s->keys[n] = key;
    table_put(s, n);
    push_front(s, n);
    s->size++;
    return 0;
}

static int key_of(PyObject *o, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static PyObject *LRU_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Py_ssize_t capacity;
    static char *kwlist[] = {"capacity", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n", kwlist, &capacity))
        return NULL;
    if (capacity < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be >= 1");
        return NULL;
    }
    LRU *s = (LRU *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->capacity = capacity;
    s->head = s->tail = s->free_head = NIL;
    if (grow_table(s, 16) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

static void LRU_dealloc(LRU *s) {
    PyMem_Free(s->keys);
    PyMem_Free(s->prev);
    PyMem_Free(s->next);
    PyMem_Free(s->table);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* add_run(keys): keys[0] ends most recent, keys[-1] least recent of them; then evict to capacity */
static PyObject *LRU_add_run(LRU *s, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "keys must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        uint64_t k;
        if (key_of(items[i], &k) < 0 || touch(s, k) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    while (s->size > s->capacity)
        evict_tail(s);
    Py_RETURN_NONE;
}

/* match_run(keys): how many keys from keys[0] on are held, assuming what is held of a run is a prefix
 * of it (add_run keeps that true): a binary search */
static PyObject *LRU_match_run(LRU *s, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "keys must be a sequence of ints");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    Py_ssize_t lo = 0, hi = n;
    uint64_t k;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (key_of(items[mid], &k) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        if (find(s, k) != NIL)
            lo = mid + 1;
        else
            hi = mid;
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(lo);
}

static PyObject *LRU_set_capacity(LRU *s, PyObject *arg) {
    Py_ssize_t c = PyLong_AsSsize_t(arg);
    if (c == -1 && PyErr_Occurred())
        return NULL;
    if (c < 1) {
        PyErr_SetString(PyExc_ValueError, "capacity must be >= 1");
        return NULL;
    }
    s->capacity = c;
    while (s->size > s->capacity)
        evict_tail(s);
    Py_RETURN_NONE;
}

static PyObject *LRU_keys(LRU *s, PyObject *unused) {
    /* least recent first, like a dict's insertion order */
    PyObject *out = PyList_New(s->size);
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    for (Py_ssize_t n = s->tail; n != NIL; n = s->prev[n]) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->keys[n]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i++, v);
    }
    return out;
}

static int LRU_contains(LRU *s, PyObject *o) {
    if (!PyLong_Check(o))
        return 0;
    uint64_t k;
    if (key_of(o, &k) < 0) {
        PyErr_Clear();   /* negative or too large: never a key */
        return 0;
    }
    return find(s, k) != NIL;
}

static Py_ssize_t LRU_len(LRU *s) { return s->size; }

static PyObject *LRU_get_capacity(LRU *s, void *closure) { return PyLong_FromSsize_t(s->capacity); }

static PyMethodDef LRU_methods[] = {
    {"add_run", (PyCFunction)LRU_add_run, METH_O, "Make keys[0] the most recent, keys[-1] the least of them; evict."},
    {"match_run", (PyCFunction)LRU_match_run, METH_O, "How many keys from keys[0] on are held (binary search)."},
    {"set_capacity", (PyCFunction)LRU_set_capacity, METH_O, "Change the capacity, evicting the least recent."},
    {"keys", (PyCFunction)LRU_keys, METH_NOARGS, "The keys, least recent first."},
    {NULL}};

static PyGetSetDef LRU_getset[] = {{"capacity", (getter)LRU_get_capacity, NULL, "entries kept", NULL}, {NULL}};

static PySequenceMethods LRU_as_sequence = {
    .sq_length = (lenfunc)LRU_len,
    .sq_contains = (objobjproc)LRU_contains,
};

static PyTypeObject LRUType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epp.kvcache._prefix.LRU",
    .tp_basicsize = sizeof(LRU),
    .tp_dealloc = (destructor)LRU_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A set of uint64 keys in recency order with a capacity (least recent evicted first).",
    .tp_methods = LRU_methods,
    .tp_getset = LRU_getset,
    .tp_as_sequence = &LRU_as_sequence,
    .tp_new = LRU_new,
};

static PyMethodDef module_methods[] = {
    {"block_keys", py_block_keys, METH_VARARGS,
     "block_keys(seed, data, block_bytes, max_blocks, partial=False) -> chained XXH64 of each block"},
    {"xxh64", py_xxh64, METH_VARARGS, "xxh64(data, seed=0) -> int"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_prefix", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__prefix(void) {
    if (PyType_Ready(&LRUType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LRUType);
    if (PyModule_AddObject(m, "LRU", (PyObject *)&LRUType) < 0) {
        Py_DECREF(&LRUType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
