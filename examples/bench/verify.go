package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// verifier counts, per device and entry, the data points the subscriber
// received: exact, duplicates apart. While a run is timed it only copies
// the payloads aside, outside the Go heap where it can, and scans them once
// the run is over, so that checking takes neither CPU nor GC time from the
// publisher being measured; past heldMax bytes it scans as they arrive.
type verifier struct {
	ds    *dataset
	index map[string]int // device name as on the wire (unquoted) -> index

	mu        sync.Mutex
	arena     []byte   // held payloads, back to back
	offHeap   bool     // arena is mapped outside the Go heap
	held      [][]byte // in arena
	heldBytes atomic.Int64
	deferred  bool     // hold payloads instead of scanning them
	seen      []uint64 // bit per (device, entry)
	st        verifyStats
	changedAt time.Time
}

// heldMax bounds the payloads a verifier holds.
const heldMax = 256 << 20

type verifyStats struct {
	messages, bytes   int64
	unique, dups, bad int64 // data points
	malformed         int64 // messages
}

func newVerifier(ds *dataset) *verifier {
	v := &verifier{ds: ds, index: make(map[string]int, len(ds.devices)), deferred: true,
		seen: make([]uint64, (len(ds.devices)*ds.entries+63)/64), changedAt: time.Now()}
	for d, q := range ds.quoted {
		v.index[q[1:len(q)-1]] = d
	}
	size := min(heldMax, int(ds.points())*64+1<<20)
	v.arena, v.offHeap = offHeap(size)
	// Touch every page now: faulting them in while a run is timed would
	// take the publisher's CPU (about 0.1 s per 5 M points here).
	full := v.arena[:cap(v.arena)]
	for i := 0; i < len(full); i += 4096 {
		full[i] = 0
	}
	return v
}

func (v *verifier) add(payload []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.st.messages++
	v.st.bytes += int64(len(payload))
	v.changedAt = time.Now()
	if n := len(v.arena); v.deferred && cap(v.arena)-n >= len(payload) {
		v.arena = append(v.arena, payload...)
		v.held = append(v.held, v.arena[n:len(v.arena):len(v.arena)])
		v.heldBytes.Add(int64(len(payload)))
		return
	}
	v.scan(payload)
}

// retained is what the verifier holds of the Go heap, to be left out of
// the publisher's peak.
func (v *verifier) retained() uint64 {
	if v.offHeap {
		return 0
	}
	return uint64(v.heldBytes.Load())
}

// scanHeld stops holding payloads and scans those held.
func (v *verifier) scanHeld() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.deferred {
		return
	}
	v.deferred = false
	for _, p := range v.held {
		v.scan(p)
	}
	v.held = nil
	v.heldBytes.Store(0)
	if v.offHeap {
		freeOffHeap(v.arena)
	}
	v.arena = nil
}

func (v *verifier) scan(payload []byte) {
	ok := scanTelemetry(payload, func(dev []byte, ts int64, points int) {
		d, known := v.index[string(dev)]
		i := ts - baseTS
		if !known || i < 0 || i >= int64(v.ds.entries) || points != len(v.ds.keys) {
			v.st.bad += int64(max(points, 0))
			return
		}
		bit := d*v.ds.entries + int(i)
		if v.seen[bit/64]&(1<<(bit%64)) != 0 {
			v.st.dups += int64(points)
			return
		}
		v.seen[bit/64] |= 1 << (bit % 64)
		v.st.unique += int64(points)
	})
	if !ok {
		v.st.malformed++
	}
}

func (v *verifier) stats() verifyStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st
}

// wait scans what was held, then returns when every point arrived, or
// nothing arrived for quiet, with the time the last message arrived.
func (v *verifier) wait(ctx context.Context, quiet time.Duration) time.Time {
	v.scanHeld()
	want := v.ds.points()
	for {
		v.mu.Lock()
		done, last := v.st.unique >= want, v.changedAt
		v.mu.Unlock()
		if done || time.Since(last) > quiet || ctx.Err() != nil {
			return last
		}
		time.Sleep(time.Millisecond)
	}
}

func subscribe(broker string, v *verifier) (paho.Client, error) {
	// Messages are handled in order on paho's router goroutine; the
	// handler only keeps the payload while the run is timed.
	c, err := pahoConnect(broker, "bench-sub-", func(o *paho.ClientOptions) { o.SetOrderMatters(true) })
	if err != nil {
		return nil, err
	}
	tok := c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { v.add(m.Payload()) })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	return c, nil
}
