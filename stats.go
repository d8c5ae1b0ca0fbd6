package tbgateway

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of the gateway's counters since Dial.
type Stats struct {
	Queued         int    // records waiting in the outbound queue
	QueuedBytes    int    // their size
	InFlight       int    // messages sent and not yet acknowledged
	Accepted       uint64 // records accepted into the queue
	Published      uint64 // messages handed to the MQTT connection
	Acknowledged   uint64 // messages confirmed (PUBACK at QoS 1, written at QoS 0)
	DataPoints     uint64 // data points in acknowledged messages
	Resent         uint64 // messages taken back from a lost connection to send again (possible duplicates at the server)
	Restored       uint64 // records loaded from the queue store at Dial (possible duplicates)
	Unrestorable   uint64 // records the queue store returned at Dial that could not be decoded, dropped
	Refused        uint64 // calls refused because the queue (or the callback lane) was full (OverflowFailFast)
	Dropped        uint64 // records evicted by OverflowDropOldest
	Expired        uint64 // records dropped for waiting longer than WithMaxAge
	Salvaged       uint64 // records the queue store salvaged from damaged files at open (see QueueStore)
	LostOnDisk     uint64 // records the queue store found damaged beyond reading at open
	Poisoned       uint64 // messages set aside as poison
	Isolated       uint64 // suspected messages taken back to retry their parts alone
	PublishErrors  uint64 // publishes the connection refused before sending (re-queued)
	Received       uint64 // messages received from the server
	Malformed      uint64 // received messages that could not be decoded, dropped
	Echoes         uint64 // own publishes a plain broker sent back, ignored
	HandlerDropped uint64 // received messages dropped because a handler queue was full (an RPC is answered with an error)
	DuplicateRPCs  uint64 // RPCs received again while their handler still ran, dropped
	HandlerPanics  uint64 // handler panics recovered
	Reconnects     uint64 // successful reconnects after the first connection
	HalfOpen       uint64 // connections ended because nothing arrived within 1.5 × keep-alive (the watchdog or a missing PINGRESP)
	Announced      uint64 // devices announced again on new connections
	Refreshed      uint64 // quiet devices announced again (WithSessionRefresh)
	LimitsApplied  uint64 // getSessionLimits answers applied

	State      ConnectionState // the connection's state now
	AckLatency Histogram       // from handing a message to the connection to its acknowledgement
}

// AckLatencyBounds are the upper bounds of Stats.AckLatency's buckets.
var AckLatencyBounds = []time.Duration{
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram is a snapshot of a latency histogram with fixed buckets.
type Histogram struct {
	Bounds []time.Duration // upper bounds of the buckets, ascending
	Counts []uint64        // observations per bucket, len(Bounds)+1: the last is above every bound
	Count  uint64          // observations
	Sum    time.Duration   // their total
}

// histogram counts observations into AckLatencyBounds' buckets.
type histogram struct {
	counts [14]atomic.Uint64 // len(AckLatencyBounds)+1
	count  atomic.Uint64
	sum    atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(AckLatencyBounds) && d > AckLatencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
	h.count.Add(1)
}

func (h *histogram) snapshot() Histogram {
	s := Histogram{Bounds: AckLatencyBounds, Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Count, s.Sum = h.count.Load(), time.Duration(h.sum.Load())
	return s
}

// counters are the gateway's counters, named after the Stats fields.
type counters struct {
	published, acked, publishErrors, received, malformed, echoes atomic.Uint64
	handlerDropped, panics, reconnects, points, resent           atomic.Uint64
	restored, refused, droppedOverflow, poisoned, announced      atomic.Uint64
	refreshed, limitsApplied, isolated, halfOpen, duplicateRPCs  atomic.Uint64
	eventsLost, unrestorable, expired, salvaged, lostOnDisk      atomic.Uint64
	ackLatency                                                   histogram
}

// Stats returns the current counters. It never blocks for long.
func (g *Gateway) Stats() Stats {
	s := &g.stats
	q, qb := g.out.queue.Len()
	return Stats{
		Queued:         q,
		QueuedBytes:    qb,
		InFlight:       g.out.inFlight(),
		Accepted:       g.out.queue.Added(),
		Published:      s.published.Load(),
		Acknowledged:   s.acked.Load(),
		DataPoints:     s.points.Load(),
		Resent:         s.resent.Load(),
		Restored:       s.restored.Load(),
		Unrestorable:   s.unrestorable.Load(),
		Refused:        s.refused.Load(),
		Dropped:        s.droppedOverflow.Load(),
		Expired:        s.expired.Load(),
		Salvaged:       s.salvaged.Load(),
		LostOnDisk:     s.lostOnDisk.Load(),
		Poisoned:       s.poisoned.Load(),
		Isolated:       s.isolated.Load(),
		PublishErrors:  s.publishErrors.Load(),
		Received:       s.received.Load(),
		Malformed:      s.malformed.Load(),
		Echoes:         s.echoes.Load(),
		HandlerDropped: s.handlerDropped.Load(),
		DuplicateRPCs:  s.duplicateRPCs.Load(),
		HandlerPanics:  s.panics.Load(),
		Reconnects:     s.reconnects.Load(),
		HalfOpen:       s.halfOpen.Load(),
		Announced:      s.announced.Load(),
		Refreshed:      s.refreshed.Load(),
		LimitsApplied:  s.limitsApplied.Load(),
		State:          g.State(),
		AckLatency:     s.ackLatency.snapshot(),
	}
}
