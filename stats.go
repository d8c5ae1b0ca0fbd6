package tbgateway

import "sync/atomic"

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
}

// counters are the gateway's counters, named after the Stats fields.
type counters struct {
	published, acked, publishErrors, received, malformed, echoes atomic.Uint64
	handlerDropped, panics, reconnects, points, resent           atomic.Uint64
	restored, refused, droppedOverflow, poisoned, announced      atomic.Uint64
	refreshed, limitsApplied, isolated, halfOpen, duplicateRPCs  atomic.Uint64
	eventsLost, unrestorable, expired, salvaged, lostOnDisk      atomic.Uint64
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
	}
}
