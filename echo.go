package tbgateway

import (
	"hash/fnv"
	"sync"
	"time"
)

// echoFilter recognises the gateway's own publishes coming back to it.
// ThingsBoard never echoes, but a plain broker (Mosquitto, mochi) delivers
// a client's publishes on topics it subscribes to; on v1/devices/me/* these
// cannot be told from server messages by their shape, so the filter
// remembers what was sent for a short while and drops one copy of each.
type echoFilter struct {
	mu      sync.Mutex
	entries map[uint64]echoEntry
}

type echoEntry struct {
	count   int
	expires time.Time
}

const (
	echoTTL = 10 * time.Second
	echoCap = 4096
)

func echoHash(topic string, payload []byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(payload)
	return h.Sum64()
}

func (f *echoFilter) add(topic string, payload []byte) {
	k := echoHash(topic, payload)
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.entries == nil {
		f.entries = make(map[uint64]echoEntry)
	}
	if len(f.entries) >= echoCap {
		for h, e := range f.entries {
			if now.After(e.expires) || len(f.entries) >= echoCap {
				delete(f.entries, h)
			}
		}
	}
	e := f.entries[k]
	f.entries[k] = echoEntry{count: e.count + 1, expires: now.Add(echoTTL)}
}

func (f *echoFilter) consume(topic string, payload []byte) bool {
	k := echoHash(topic, payload)
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[k]
	if !ok {
		return false
	}
	if e.count <= 1 {
		delete(f.entries, k)
	} else {
		e.count--
		f.entries[k] = e
	}
	return time.Now().Before(e.expires)
}
