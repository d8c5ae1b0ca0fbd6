// Package pending correlates requests with the replies that arrive later on
// another topic. A waiter's channel has room for exactly one reply, every
// entry is removed on reply, on cancellation and on connection loss, and a
// reply nobody waits for is dropped: the receive path can never block on it.
package pending

import "sync"

// Reply is what a waiter receives: a value or an error.
type Reply[V any] struct {
	Value V
	Err   error
}

// Table maps request keys to waiters.
type Table[K comparable, V any] struct {
	mu      sync.Mutex
	waiters map[K]chan Reply[V]
}

// Add registers key and returns the channel its reply will arrive on, or
// false when key is already waiting.
func (t *Table[K, V]) Add(key K) (<-chan Reply[V], bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.waiters == nil {
		t.waiters = make(map[K]chan Reply[V])
	}
	if _, dup := t.waiters[key]; dup {
		return nil, false
	}
	ch := make(chan Reply[V], 1)
	t.waiters[key] = ch
	return ch, true
}

// Remove forgets key (after a timeout or cancellation).
func (t *Table[K, V]) Remove(key K) {
	t.mu.Lock()
	delete(t.waiters, key)
	t.mu.Unlock()
}

// Resolve hands v to the waiter of key and reports whether there was one.
func (t *Table[K, V]) Resolve(key K, v V) bool {
	t.mu.Lock()
	ch, ok := t.waiters[key]
	delete(t.waiters, key)
	t.mu.Unlock()
	if ok {
		ch <- Reply[V]{Value: v}
	}
	return ok
}

// FailAll hands err to every waiter and empties the table.
func (t *Table[K, V]) FailAll(err error) {
	t.mu.Lock()
	w := t.waiters
	t.waiters = nil
	t.mu.Unlock()
	for _, ch := range w {
		ch <- Reply[V]{Err: err}
	}
}
