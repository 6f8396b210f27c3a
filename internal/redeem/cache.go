package redeem

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// boundedCache is a concurrency-safe map with a hard size bound and CLOCK (second-chance) eviction: a hit only
// sets a flag under a read lock, so the warm redeem path never takes a write lock, and an entry that has been used
// since the hand last passed survives one more sweep. Sharding keeps writers (misses) off each other's locks.
type boundedCache[V any] struct {
	seed   maphash.Seed
	shards []cacheShard[V]
}

type cacheShard[V any] struct {
	mu    sync.RWMutex
	index map[string]int
	slots []cacheSlot[V]
	limit int
	hand  int
	_     [40]byte // keep neighbouring shards' locks off one cache line
}

type cacheSlot[V any] struct {
	key string
	val V
	ref atomic.Bool
}

const cacheShards = 16

// newBoundedCache holds at most size entries (at least one per shard).
func newBoundedCache[V any](size int) *boundedCache[V] {
	per := (size + cacheShards - 1) / cacheShards
	if per < 1 {
		per = 1
	}
	c := &boundedCache[V]{seed: maphash.MakeSeed(), shards: make([]cacheShard[V], cacheShards)}
	for i := range c.shards {
		c.shards[i].limit = per
		c.shards[i].index = make(map[string]int, per)
		c.shards[i].slots = make([]cacheSlot[V], 0, per)
	}
	return c
}

func (c *boundedCache[V]) shard(key string) *cacheShard[V] {
	return &c.shards[maphash.String(c.seed, key)%cacheShards]
}

func (c *boundedCache[V]) get(key string) (V, bool) {
	s := c.shard(key)
	s.mu.RLock()
	i, ok := s.index[key]
	var v V
	if ok {
		sl := &s.slots[i]
		if !sl.ref.Load() { // a load first: a hot entry's flag is already set, so no cache-line write
			sl.ref.Store(true)
		}
		v = sl.val
	}
	s.mu.RUnlock()
	return v, ok
}

func (c *boundedCache[V]) put(key string, v V) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[key]; ok {
		s.slots[i].val = v
		return
	}
	if len(s.slots) < s.limit {
		s.slots = append(s.slots, cacheSlot[V]{key: key, val: v})
		s.index[key] = len(s.slots) - 1
		return
	}
	// Sweep: clear reference flags until an unreferenced slot comes up. At most two passes.
	for {
		if s.hand >= len(s.slots) {
			s.hand = 0
		}
		sl := &s.slots[s.hand]
		if sl.ref.Load() {
			sl.ref.Store(false)
			s.hand++
			continue
		}
		delete(s.index, sl.key)
		sl.key, sl.val = key, v
		s.index[key] = s.hand
		s.hand++
		return
	}
}

func (c *boundedCache[V]) remove(key string) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[key]
	if !ok {
		return
	}
	last := len(s.slots) - 1
	if i != last {
		moved := &s.slots[last]
		s.slots[i].key, s.slots[i].val = moved.key, moved.val
		s.slots[i].ref.Store(moved.ref.Load())
		s.index[moved.key] = i
	}
	var zero V
	s.slots[last].key, s.slots[last].val = "", zero
	s.slots = s.slots[:last]
	delete(s.index, key)
}

// clear empties the cache; entries being read concurrently stay valid for their readers.
func (c *boundedCache[V]) clear() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.index)
		clear(s.slots[:cap(s.slots)])
		s.slots = s.slots[:0]
		s.hand = 0
		s.mu.Unlock()
	}
}

func (c *boundedCache[V]) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.slots)
		s.mu.RUnlock()
	}
	return n
}
