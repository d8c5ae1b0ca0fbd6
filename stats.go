package tbgateway

import (
	"slices"
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

// AckLatencyBounds returns the upper bounds of Stats.AckLatency's buckets.
func AckLatencyBounds() []time.Duration { return slices.Clone(ackLatencyBounds[:]) }

var ackLatencyBounds = [...]time.Duration{
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

// histogram counts observations into ackLatencyBounds' buckets.
type histogram struct {
	counts [len(ackLatencyBounds) + 1]atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	i := 0
	for i < len(ackLatencyBounds) && d > ackLatencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
	h.count.Add(1)
}

func (h *histogram) snapshot() Histogram {
	s := Histogram{Bounds: AckLatencyBounds(), Counts: make([]uint64, len(h.counts))}
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

// StatsMetric is one count or level of Stats, named for metric exporters:
// plugin/tbprom and plugin/tbotel export exactly these, so that every
// exporter names and describes the same figures, and a new Stats field
// reaches them all from one table.
type StatsMetric struct {
	Field string // the Stats field it reads
	Name  string // snake_case, without namespace or suffix: handler_dropped, queue_depth_bytes
	Help  string
	Unit  string // "By" for a size in bytes, else ""
	Gauge bool   // a level now (the queue's depth), not a count since Dial
	Value func(*Stats) uint64
}

// StatsMetrics returns every counter and gauge of Stats, counters first, in
// a fixed order. Stats.State and Stats.AckLatency are not among them: each
// exporter shapes those its own way.
func StatsMetrics() []StatsMetric { return slices.Clone(statsMetrics) }

var statsMetrics = []StatsMetric{
	{Field: "Accepted", Name: "accepted", Help: "Records accepted into the queue.", Value: func(s *Stats) uint64 { return s.Accepted }},
	{Field: "Published", Name: "published", Help: "Messages handed to the MQTT connection.", Value: func(s *Stats) uint64 { return s.Published }},
	{Field: "Acknowledged", Name: "acknowledged", Help: "Messages confirmed (PUBACK at QoS 1, written at QoS 0).", Value: func(s *Stats) uint64 { return s.Acknowledged }},
	{Field: "DataPoints", Name: "data_points", Help: "Data points in acknowledged messages.", Value: func(s *Stats) uint64 { return s.DataPoints }},
	{Field: "Resent", Name: "resent", Help: "Messages taken back from a lost connection to send again (possible duplicates at the server).", Value: func(s *Stats) uint64 { return s.Resent }},
	{Field: "Restored", Name: "restored", Help: "Records loaded from the queue store at Dial (possible duplicates).", Value: func(s *Stats) uint64 { return s.Restored }},
	{Field: "Unrestorable", Name: "unrestorable", Help: "Records the queue store returned at Dial that could not be decoded, dropped.", Value: func(s *Stats) uint64 { return s.Unrestorable }},
	{Field: "Refused", Name: "refused", Help: "Calls refused because the queue (or the callback lane) was full.", Value: func(s *Stats) uint64 { return s.Refused }},
	{Field: "Dropped", Name: "dropped", Help: "Records evicted by OverflowDropOldest.", Value: func(s *Stats) uint64 { return s.Dropped }},
	{Field: "Expired", Name: "expired", Help: "Records dropped for waiting longer than WithMaxAge.", Value: func(s *Stats) uint64 { return s.Expired }},
	{Field: "Salvaged", Name: "salvaged", Help: "Records the queue store salvaged from damaged files at open.", Value: func(s *Stats) uint64 { return s.Salvaged }},
	{Field: "LostOnDisk", Name: "lost_on_disk", Help: "Records the queue store found damaged beyond reading at open.", Value: func(s *Stats) uint64 { return s.LostOnDisk }},
	{Field: "Poisoned", Name: "poisoned", Help: "Messages set aside as poison.", Value: func(s *Stats) uint64 { return s.Poisoned }},
	{Field: "Isolated", Name: "isolated", Help: "Suspected messages taken back to retry their parts alone.", Value: func(s *Stats) uint64 { return s.Isolated }},
	{Field: "PublishErrors", Name: "publish_errors", Help: "Publishes the connection refused before sending (re-queued).", Value: func(s *Stats) uint64 { return s.PublishErrors }},
	{Field: "Received", Name: "received", Help: "Messages received from the server.", Value: func(s *Stats) uint64 { return s.Received }},
	{Field: "Malformed", Name: "malformed", Help: "Received messages that could not be decoded, dropped.", Value: func(s *Stats) uint64 { return s.Malformed }},
	{Field: "Echoes", Name: "echoes", Help: "Own publishes a plain broker sent back, ignored.", Value: func(s *Stats) uint64 { return s.Echoes }},
	{Field: "HandlerDropped", Name: "handler_dropped", Help: "Received messages dropped because a handler queue was full.", Value: func(s *Stats) uint64 { return s.HandlerDropped }},
	{Field: "DuplicateRPCs", Name: "duplicate_rpcs", Help: "RPCs received again while their handler still ran, dropped.", Value: func(s *Stats) uint64 { return s.DuplicateRPCs }},
	{Field: "HandlerPanics", Name: "handler_panics", Help: "Handler panics recovered.", Value: func(s *Stats) uint64 { return s.HandlerPanics }},
	{Field: "Reconnects", Name: "reconnects", Help: "Successful reconnects after the first connection.", Value: func(s *Stats) uint64 { return s.Reconnects }},
	{Field: "HalfOpen", Name: "half_open", Help: "Connections ended because nothing arrived within 1.5 x keep-alive.", Value: func(s *Stats) uint64 { return s.HalfOpen }},
	{Field: "Announced", Name: "announced", Help: "Devices announced again on new connections.", Value: func(s *Stats) uint64 { return s.Announced }},
	{Field: "Refreshed", Name: "refreshed", Help: "Quiet devices announced again (WithSessionRefresh).", Value: func(s *Stats) uint64 { return s.Refreshed }},
	{Field: "LimitsApplied", Name: "limits_applied", Help: "getSessionLimits answers applied.", Value: func(s *Stats) uint64 { return s.LimitsApplied }},
	{Field: "Queued", Name: "queue_depth_records", Help: "Records waiting in the outbound queue.", Gauge: true, Value: func(s *Stats) uint64 { return uint64(s.Queued) }},
	{Field: "QueuedBytes", Name: "queue_depth_bytes", Help: "Size of the records waiting in the outbound queue, in bytes.", Unit: "By", Gauge: true, Value: func(s *Stats) uint64 { return uint64(s.QueuedBytes) }},
	{Field: "InFlight", Name: "in_flight_messages", Help: "Messages sent and not yet acknowledged.", Gauge: true, Value: func(s *Stats) uint64 { return uint64(s.InFlight) }},
}
