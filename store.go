package tbgateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/thingsgate/tbgateway/internal/outbox"
)

// QueueStore keeps the outbound queue outside the process, so that what
// a publish call accepted survives a crash: the gateway appends every
// record before the call returns (or is accepted, for the async calls),
// removes it once the server acknowledged it, and loads what is left at
// Dial, sending it first. Records are opaque bytes to the store. The
// package durable has the implementation tbgateway ships (a checksummed
// segmented log); a program that never uses it does not link it.
//
// Append must store data in order, give each record an id (ids), and
// return only once the records are as durable as the store promises; it
// must not keep data or ids after it returns (the gateway reuses them).
// Remove and SetAside must not wait for the disk: they run on the MQTT
// network goroutine. Implementations must be safe for concurrent use.
//
// A store that repaired itself when opened may also have a method
// Recovered() (salvaged, lost int): Dial adds them to Stats.Salvaged and
// Stats.LostOnDisk and logs them (package durable's Log has it).
type QueueStore interface {
	// Load calls fn with every record kept from before, oldest first.
	Load(fn func(id uint64, data []byte) error) error
	// Append stores data as records and sets their ids.
	Append(data [][]byte, ids []uint64) error
	// Remove forgets acknowledged records.
	Remove(ids []uint64)
	// SetAside moves a poison record out of the queue, for inspection.
	SetAside(id uint64, data []byte)
	// Close releases the store; the gateway calls it from Close.
	Close() error
}

// WithQueueStore keeps the outbound queue in s as well as in memory (see
// QueueStore), for store-and-forward across restarts; Close closes s.
// Delivery is at least once: a message in flight at a crash or a
// connection loss may reach the server twice (Stats.Resent,
// Stats.Restored). The queue's bounds (WithQueue) bound what s holds too.
// Off by default: the queue is in memory only.
func WithQueueStore(s QueueStore) Option {
	return func(o *options) error {
		if s == nil {
			return invalid("nil queue store")
		}
		o.store = s
		return nil
	}
}

// store binds records to a QueueStore.
type store struct{ s QueueStore }

// scratch is what one append needs; the store copies what it is given,
// so it is reused.
type scratch struct {
	buf  []byte
	data [][]byte
	ids  []uint64
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// append encodes and stores the records of one call in one Append.
func (st store) append(recs []*outbox.Record) error {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	size := 0
	for _, r := range recs {
		size += outbox.RecordSize(r)
	}
	if cap(sc.buf) < size {
		sc.buf = make([]byte, 0, size)
	}
	buf := sc.buf[:0]
	sc.data, sc.ids = sc.data[:0], sc.ids[:0]
	for _, r := range recs {
		start := len(buf)
		buf = outbox.AppendRecord(buf, r)
		sc.data = append(sc.data, buf[start:len(buf):len(buf)])
		sc.ids = append(sc.ids, 0)
	}
	sc.buf = buf[:0]
	err := st.s.Append(sc.data, sc.ids)
	if err == nil {
		for i, r := range recs {
			r.Seq = sc.ids[i]
		}
	}
	if cap(sc.buf) > 1<<20 {
		sc.buf = nil // a huge call's buffer is not kept
	}
	clear(sc.data)
	return err
}

// remove forgets the stored ones of recs.
// It runs on the network goroutine for every acknowledged message, so its
// id list comes from the same pool as append's.
func (st store) remove(recs []*outbox.Record) {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	ids := sc.ids[:0]
	for _, r := range recs {
		if r.Seq != 0 {
			ids = append(ids, r.Seq)
		}
	}
	if len(ids) > 0 {
		st.s.Remove(ids)
	}
	sc.ids = ids[:0]
}

func (st store) setAside(recs []*outbox.Record) {
	for _, r := range recs {
		if r.Seq != 0 {
			st.s.SetAside(r.Seq, outbox.AppendRecord(nil, r))
		}
	}
}

// restore puts what the store kept at the head of the queue. A record the
// store returns but that does not decode is counted and dropped: it
// cannot be sent, and must not stop the gateway.
func (s *sender) restore(ctx context.Context) error {
	if rs, ok := s.durable.s.(interface{ Recovered() (salvaged, lost int) }); ok {
		if salvaged, lost := rs.Recovered(); salvaged > 0 || lost > 0 {
			s.g.stats.salvaged.Add(uint64(salvaged))
			s.g.stats.lostOnDisk.Add(uint64(lost))
			s.g.log.Warn("tbgateway: the queue store was damaged and repaired", "salvaged", salvaged, "lost", lost)
		}
	}
	var recs []*outbox.Record
	now := time.Now().UnixNano()
	bad := 0
	err := s.durable.s.Load(func(id uint64, data []byte) error {
		r, err := outbox.DecodeRecord(data)
		if err != nil {
			bad++
			s.durable.s.Remove([]uint64{id})
			return nil
		}
		r.Seq = id
		if s.g.opts.maxAge > 0 {
			r.At = now
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return fmt.Errorf("tbgateway: queue store: %w", err)
	}
	if bad > 0 {
		s.g.stats.unrestorable.Add(uint64(bad))
		s.g.log.Error("tbgateway: stored records that could not be decoded were dropped", "records", bad)
	}
	if len(recs) > 0 {
		if err := s.queue.Put(ctx, recs, true); err != nil {
			return fmt.Errorf("tbgateway: queue store: %w", err)
		}
		s.g.stats.restored.Add(uint64(len(recs)))
		s.g.log.Info("tbgateway: restored queued records", "records", len(recs))
	}
	return nil
}
