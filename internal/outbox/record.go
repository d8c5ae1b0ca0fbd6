// Package outbox is the queue between the public API and the MQTT
// connection: every message the gateway sends passes through it.
//
// Callers put Records, which are already-encoded pieces of messages. Raw
// records are whole messages (connect, claim, requests, replies).
// Telemetry and attribute records carry one device's part of a
// v1/gateway/telemetry or v1/gateway/attributes message, so that records of
// many calls can be packed into one message (Pack), with the message size
// counted exactly as ThingsBoard counts it.
package outbox

import "sync/atomic"

// Kind says how a Record becomes a message.
type Kind uint8

const (
	// Raw records are whole messages: Topic and Body.
	Raw Kind = iota
	// Telemetry records are "device":[Body] parts of v1/gateway/telemetry.
	Telemetry
	// Attributes records are "device":{Body} parts of v1/gateway/attributes.
	Attributes
)

// Topics of the mergeable kinds.
const (
	TopicTelemetry  = "v1/gateway/telemetry"
	TopicAttributes = "v1/gateway/attributes"
)

// Record is one queued piece of outbound data.
type Record struct {
	// call is the storage of the Waiter of a call this record begins
	// (Bind). It and the fields after it, up to Isolate, are what an
	// acknowledgement reads: first, to share a cache line, because by the
	// time the PUBACK comes the record has long left every cache.
	call Waiter
	// Waiter, if set, is told when the record is acknowledged or fails.
	Waiter *Waiter
	Kind   Kind
	// Isolate keeps the record out of merged messages: it was part of a
	// message the server kept rejecting, and must be tried alone.
	Isolate bool
	// Announce marks the gateway's own re-announcement of a device on a
	// new connection: it is not queued, and never taken back, since the
	// next connection announces the device anew.
	Announce bool
	Topic    string // Raw only; the mergeable kinds have a fixed topic
	// Device is the device name as a JSON string, quotes included, for the
	// mergeable kinds.
	Device string
	// Body is the payload (Raw), the comma-joined entries of a telemetry
	// array, or the comma-joined members of an attribute object.
	Body []byte
	// Points is the number of data points (key-value pairs) the record
	// carries, as ThingsBoard's rate limits count them.
	Points int
	// Seq identifies the record in a durable store (0 when not stored).
	Seq uint64
	// At is when the record was accepted, in unix nanoseconds, for a
	// maximum age (0: never expires).
	At int64
	// DeviceName is the plain device name the record belongs to ("" when
	// none).
	DeviceName string
	// Note carries what the gateway must remember when the record is
	// acknowledged (the profile of a connect).
	Note string

	// self is the slice of a call of this record alone (Alone): with call,
	// a call of one record is one allocation.
	self [1]*Record
}

// Clone returns a copy of r for another message, without its waiter and
// durable sequence: a copy sent again for a call that already has its
// outcome.
func (r *Record) Clone() *Record {
	return &Record{Kind: r.Kind, Topic: r.Topic, Device: r.Device, Body: r.Body, Points: r.Points,
		DeviceName: r.DeviceName, Note: r.Note, Isolate: r.Isolate, At: r.At}
}

// Alone returns the records of a call of r alone.
func (r *Record) Alone() []*Record {
	r.self[0] = r
	return r.self[:]
}

// Bind makes recs the records of one call and returns its waiter, kept in
// the first record. callback, if not nil, is the caller's: Ack and Fail
// report when the outcome is known, and whoever learns it runs the callback
// (the gateway does so off the network goroutine, several at a time).
// Without a callback the waiter has a Done channel to wait on.
func Bind(recs []*Record, callback func(error)) *Waiter {
	w := &recs[0].call
	w.init(len(recs), callback)
	for _, r := range recs {
		r.Waiter = w
	}
	return w
}

// Topic returns the topic of the mergeable kinds ("" for Raw).
func (k Kind) Topic() string {
	switch k {
	case Telemetry:
		return TopicTelemetry
	case Attributes:
		return TopicAttributes
	}
	return ""
}

// TopicOf returns the topic the record is published on.
func (r *Record) TopicOf() string {
	if r.Kind == Raw {
		return r.Topic
	}
	return r.Kind.Topic()
}

// Cost is the record's share of the queue's byte bound.
func (r *Record) Cost() int { return len(r.Body) + len(r.Device) + len(r.Topic) }

// Waiter collects the outcome of the records of one call: the call is done
// when all of them are acknowledged, or at the first failure.
type Waiter struct {
	remaining atomic.Int64
	decided   atomic.Bool
	done      chan struct{}
	err       error
	callback  func(error)
}

func (w *Waiter) init(n int, callback func(error)) {
	w.callback = callback
	if callback == nil {
		// Only a caller that waits needs the channel.
		w.done = make(chan struct{})
	}
	w.remaining.Store(int64(n))
}

// Done is closed when the outcome is known (nil for a waiter with a
// callback).
func (w *Waiter) Done() <-chan struct{} { return w.done }

// Decided reports whether the outcome is known: a call that failed needs
// no more acknowledgements.
func (w *Waiter) Decided() bool { return w.decided.Load() }

// Err is the outcome once Done is closed.
func (w *Waiter) Err() error { return w.err }

// Callback returns the caller's callback, nil when the caller waits on
// Done.
func (w *Waiter) Callback() func(error) { return w.callback }

// Ack reports one record acknowledged; it returns true when that decided
// the outcome (the last record, with no failure before).
func (w *Waiter) Ack() bool {
	if w.remaining.Add(-1) == 0 {
		return w.finish(nil)
	}
	return false
}

// Fail reports a record failed: the call fails. It returns true when that
// decided the outcome.
func (w *Waiter) Fail(err error) bool { return w.finish(err) }

func (w *Waiter) finish(err error) bool {
	if !w.decided.CompareAndSwap(false, true) {
		return false
	}
	w.err = err
	if w.done != nil {
		close(w.done)
	}
	return true
}
