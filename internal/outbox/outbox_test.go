package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func tele(dev, body string, points int) *Record {
	b, _ := json.Marshal(dev)
	return &Record{Kind: Telemetry, Device: string(b), DeviceName: dev, Body: []byte(body), Points: points}
}

func TestPackGroupsByDeviceInOrder(t *testing.T) {
	recs := []*Record{
		tele("A", `{"ts":1,"values":{"a":1}}`, 1),
		tele("B", `{"ts":1,"values":{"b":1}}`, 1),
		tele("A", `{"ts":2,"values":{"a":2}}`, 1),
		{Kind: Raw, Topic: "v1/gateway/connect", Body: []byte(`{"device":"C"}`)},
		tele("C", `{"ts":1,"values":{"c":1}}`, 1),
	}
	m, n := Pack(recs, 1<<16, 0, 1, true)
	assert.Equal(t, 3, n, "a raw record ends the run")
	assert.Equal(t, TopicTelemetry, m.Topic)
	assert.Equal(t, `{"A":[{"ts":1,"values":{"a":1}},{"ts":2,"values":{"a":2}}],"B":[{"ts":1,"values":{"b":1}}]}`, string(m.Payload))
	assert.Equal(t, 3, m.Points)
	assert.True(t, json.Valid(m.Payload))

	m, n = Pack(recs[3:], 1<<16, 0, 1, true)
	assert.Equal(t, 1, n)
	assert.Equal(t, `{"device":"C"}`, string(m.Payload))

	// Without merging every record is a message of its own.
	m, n = Pack(recs, 1<<16, 0, 1, false)
	assert.Equal(t, 1, n)
	assert.Equal(t, `{"A":[{"ts":1,"values":{"a":1}}]}`, string(m.Payload))
}

// TestPackNeverExceedsLimit packs random records at random limits and
// checks every message against the limit on its real encoded size, and that
// the limit is used tightly: the next record would not have fitted.
func TestPackNeverExceedsLimit(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var recs []*Record
		for i := 0; i < 300; i++ {
			body := fmt.Sprintf(`{"ts":%d,"values":{"v":"%s"}}`, i, strings.Repeat("x", rng.IntN(40)))
			recs = append(recs, tele(fmt.Sprintf("dev-%d", rng.IntN(8)), body, 1))
		}
		limit := 200 + rng.IntN(3000)
		maxPoints := 0
		if rng.IntN(2) == 0 {
			maxPoints = 1 + rng.IntN(20)
		}
		total := 0
		for len(recs) > 0 {
			m, n := Pack(recs, limit, maxPoints, 1, true)
			require.Greater(t, n, 0)
			require.True(t, json.Valid(m.Payload), "%s", m.Payload)
			size := m.Size(1)
			require.LessOrEqual(t, size, limit)
			if maxPoints > 0 {
				require.LessOrEqual(t, m.Points, maxPoints)
			}
			if n < len(recs) && (maxPoints == 0 || m.Points+recs[n].Points <= maxPoints) {
				// The next record would have overflowed.
				next, _ := Pack(append(append([]*Record(nil), recs[:n]...), recs[n]), 1<<30, 0, 1, true)
				require.Greater(t, next.Size(1), limit)
			}
			total += n
			recs = recs[n:]
		}
		assert.Equal(t, 300, total)
	}
}

// TestPackerReuse: a Packer kept across messages, as the sender keeps it,
// makes exactly the messages a fresh one makes, whether the previous
// message had few devices or enough to need its index; and each device's
// records come out in their order.
func TestPackerReuse(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var p Packer
	last := map[string]int{}
	for round := 0; round < 100; round++ {
		devices := []int{1, 3, 16, 17, 40}[rng.IntN(5)]
		var recs []*Record
		for i := 0; i < 400; i++ {
			seq := round*1000 + i
			recs = append(recs, tele(fmt.Sprintf("dev-%d", rng.IntN(devices)), fmt.Sprintf(`{"ts":%d,"values":{"v":1}}`, seq), 1))
		}
		for len(recs) > 0 {
			limit := 300 + rng.IntN(4000)
			want, wn := Pack(recs, limit, 0, 1, true)
			got, n := p.Pack(recs, limit, 0, 1, true)
			require.Equal(t, wn, n)
			require.Equal(t, string(want.Payload), string(got.Payload))
			require.Equal(t, recs[:n], got.Records)
			var byDevice map[string][]struct{ TS int }
			require.NoError(t, json.Unmarshal(got.Payload, &byDevice))
			count := 0
			for dev, entries := range byDevice {
				for _, e := range entries {
					require.Greater(t, e.TS, last[dev]-1, "order of %s", dev)
					last[dev] = e.TS + 1
					count++
				}
			}
			require.Equal(t, n, count)
			recs = recs[n:]
		}
	}
}

func TestQueuePolicies(t *testing.T) {
	ctx := context.Background()
	r := func() *Record { return &Record{Kind: Raw, Topic: "t", Body: []byte("0123456789")} }

	q := NewQueue(2, 1000, FailFast, nil)
	require.NoError(t, q.Put(ctx, []*Record{r(), r()}, false))
	assert.ErrorIs(t, q.Put(ctx, []*Record{r()}, false), ErrFull)
	assert.ErrorIs(t, q.Put(ctx, []*Record{r(), r(), r()}, false), ErrTooBig)

	var dropped []*Record
	q = NewQueue(3, 1000, DropOldest, func(x *Record) { dropped = append(dropped, x) })
	first := r()
	require.NoError(t, q.Put(ctx, []*Record{first, r(), r()}, false))
	require.NoError(t, q.Put(ctx, []*Record{r()}, false))
	assert.Equal(t, []*Record{first}, dropped)
	assert.Equal(t, uint64(1), q.Dropped())

	q = NewQueue(100, 25, Block, nil) // bytes bound: two records
	require.NoError(t, q.Put(ctx, []*Record{r(), r()}, false))
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, q.Put(short, []*Record{r()}, false), context.DeadlineExceeded)
	done := make(chan error, 1)
	go func() { done <- q.Put(ctx, []*Record{r()}, false) }()
	time.Sleep(10 * time.Millisecond)
	taken, _ := q.Peek(1)
	require.True(t, q.Take(taken))
	require.NoError(t, <-done)
	n, b := q.Len()
	assert.Equal(t, 2, n)
	assert.Equal(t, 22, b)

	// Re-queued records go to the front, whatever the bounds.
	front := r()
	require.NoError(t, q.Put(ctx, []*Record{front}, true))
	got, _ := q.Peek(10)
	assert.Same(t, front, got[0])
	rest := q.Close()
	assert.Len(t, rest, 3)
	assert.ErrorIs(t, q.Put(ctx, []*Record{r()}, false), ErrClosed)
}

// TestQueueRing drives the ring through random tail and front puts, peeks
// (wrapping around its end or not) and removals, with front puts between a
// Peek and its Remove as a reconnect makes them, against a plain slice.
func TestQueueRing(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 6))
	q := NewQueue(1<<20, 1<<30, Block, nil)
	var model []*Record
	id := 0
	mk := func(n int) []*Record {
		recs := make([]*Record, n)
		for i := range recs {
			id++
			recs[i] = &Record{Kind: Raw, Topic: "t", Body: []byte(fmt.Sprint(id))}
		}
		return recs
	}
	for step := 0; step < 20000; step++ {
		switch op := rng.IntN(10); {
		case op < 5:
			recs := mk(1 + rng.IntN(7))
			require.NoError(t, q.Put(ctx, recs, false))
			model = append(model, recs...)
		case op < 6:
			recs := mk(1 + rng.IntN(3))
			require.NoError(t, q.Put(ctx, recs, true))
			model = append(append([]*Record(nil), recs...), model...)
		default:
			got, _ := q.Peek(1 + rng.IntN(40))
			require.Equal(t, model[:len(got)], got)
			n := rng.IntN(len(got) + 1)
			taken := append([]*Record(nil), got[:n]...)
			if rng.IntN(4) == 0 {
				// Put in front since the Peek: older, it goes first, and
				// the consumer must look again.
				recs := mk(1 + rng.IntN(3))
				require.NoError(t, q.Put(ctx, recs, true))
				model = append(append([]*Record(nil), recs...), model...)
				require.False(t, q.Take(taken))
			} else {
				model = model[n:]
				require.Equal(t, n > 0, q.Take(taken))
			}
		}
		msgs, bytes := q.Len()
		require.Equal(t, len(model), msgs, "step %d", step)
		want := 0
		for _, r := range model {
			want += r.Cost()
		}
		require.Equal(t, want, bytes)
	}
	require.Equal(t, model, q.Close())
}

// TestQueueRingDropOldest is TestQueueRing for a small queue that evicts
// while the consumer holds what it peeked: the oldest records it does not
// hold go, and a Put that only those it holds could make room for waits.
func TestQueueRingDropOldest(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(9, 10))
	const max = 50
	var dropped []*Record
	q := NewQueue(max, 1<<30, DropOldest, func(r *Record) { dropped = append(dropped, r) })
	var model []*Record
	lent := map[*Record]bool{}
	put := func(front bool) {
		recs := make([]*Record, 1+rng.IntN(6))
		for i := range recs {
			recs[i] = &Record{Kind: Raw, Topic: "t", Body: []byte("x")}
		}
		if !front && len(lent)+len(recs) > max {
			short, cancel := context.WithTimeout(ctx, time.Millisecond)
			defer cancel()
			require.ErrorIs(t, q.Put(short, recs, false), context.DeadlineExceeded)
			require.Empty(t, dropped, "evicted without making room")
			return
		}
		require.NoError(t, q.Put(ctx, recs, front))
		if front {
			model = append(append([]*Record(nil), recs...), model...)
			return
		}
		for len(model)+len(recs) > max {
			i := 0
			for lent[model[i]] {
				i++
			}
			require.Same(t, model[i], dropped[0], "the oldest record not being sent is evicted")
			model, dropped = append(model[:i:i], model[i+1:]...), dropped[1:]
		}
		model = append(model, recs...)
		require.Empty(t, dropped)
	}
	for step := 0; step < 20000; step++ {
		if rng.IntN(3) > 0 {
			put(rng.IntN(8) == 0)
			continue
		}
		got, _ := q.Peek(1 + rng.IntN(60))
		require.Equal(t, model[:len(got)], got)
		clear(lent) // a Peek ends the loan of the last one's records
		for _, r := range got {
			lent[r] = true
		}
		taken := append([]*Record(nil), got[:rng.IntN(len(got)+1)]...)
		for range rng.IntN(4) {
			put(rng.IntN(4) == 0)
		}
		// Taken only if still at the head: nothing put in front since, or
		// evicted again.
		atHead := len(taken) > 0 && model[0] == taken[0]
		require.Equal(t, atHead, q.Take(taken))
		if atHead {
			require.Equal(t, taken, model[:len(taken)])
			model = model[len(taken):]
			clear(lent)
		}
		n, _ := q.Len()
		require.Equal(t, len(model), n, "step %d", step)
	}
	require.Equal(t, model, q.Close())
}

// TestQueueDropOldestSparesLent: records the consumer has peeked are being
// sent; DropOldest evicts the oldest of the others, and waits when only
// those could make room.
func TestQueueDropOldestSparesLent(t *testing.T) {
	ctx := context.Background()
	r := func() *Record { return &Record{Kind: Raw, Topic: "t", Body: []byte("x")} }
	var dropped []*Record
	q := NewQueue(4, 1000, DropOldest, func(x *Record) { dropped = append(dropped, x) })
	a, b, c, d := r(), r(), r(), r()
	require.NoError(t, q.Put(ctx, []*Record{a, b, c, d}, false))
	got, _ := q.Peek(3)
	taken := append([]*Record(nil), got...) // a b c
	e := r()
	require.NoError(t, q.Put(ctx, []*Record{e}, false)) // evicts d, not a
	assert.Equal(t, []*Record{d}, dropped)
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, q.Put(short, []*Record{r(), r()}, false), context.DeadlineExceeded, "only a, b, c could make room")
	assert.Equal(t, []*Record{d}, dropped, "nothing evicted for a Put that waited")
	require.True(t, q.Take(taken))
	assert.Equal(t, []*Record{e}, q.Close())
}

// TestQueueFrontIgnoresBounds: everything taken back from the connection
// goes back in front, however much it is.
func TestQueueFrontIgnoresBounds(t *testing.T) {
	ctx := context.Background()
	q := NewQueue(2, 10, FailFast, nil)
	var recs []*Record
	for range 5 {
		recs = append(recs, &Record{Kind: Raw, Topic: "t", Body: []byte("0123456789")})
	}
	assert.ErrorIs(t, q.Put(ctx, recs, false), ErrTooBig)
	require.NoError(t, q.Put(ctx, recs, true))
	n, _ := q.Len()
	assert.Equal(t, 5, n)
}

func TestWaiter(t *testing.T) {
	w := Bind([]*Record{{}, {}}, nil)
	w.Ack()
	select {
	case <-w.Done():
		t.Fatal("done after one of two")
	default:
	}
	w.Ack()
	<-w.Done()
	assert.NoError(t, w.Err())

	recs := []*Record{{}, {}}
	w = Bind(recs, func(error) {})
	assert.Same(t, w, recs[1].Waiter, "every record of the call shares its waiter")
	assert.Nil(t, w.Done(), "no channel when nobody waits on it")
	assert.NotNil(t, w.Callback())
	assert.False(t, w.Ack())
	assert.True(t, w.Fail(fmt.Errorf("lost")), "the failure decides")
	assert.False(t, w.Ack(), "the outcome is decided once")
	assert.EqualError(t, w.Err(), "lost")
}

func TestDecodeRecordRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {9, 0}, {recordVersion, 0, 200}, {recordVersion, 0, 1, 'a', 5}} {
		_, err := DecodeRecord(b)
		assert.Error(t, err, "%v", b)
	}
	r := &Record{Kind: Telemetry, Topic: "", Device: `"x"`, DeviceName: "x", Note: "n", Points: 7, Body: []byte("body")}
	back, err := DecodeRecord(AppendRecord(nil, r))
	require.NoError(t, err)
	assert.Equal(t, r, back)
}

// TestQueueDropExpired: only the records accepted before the cut-off, at
// the head, go; records without a time never expire; room is freed for a
// blocked producer.
func TestQueueDropExpired(t *testing.T) {
	ctx := context.Background()
	q := NewQueue(3, 1000, Block, nil)
	recs := []*Record{{Kind: Raw, Topic: "t", Body: []byte("a"), At: 10}, {Kind: Raw, Topic: "t", Body: []byte("b"), At: 20},
		{Kind: Raw, Topic: "t", Body: []byte("c"), At: 30}}
	require.NoError(t, q.Put(ctx, recs, false))
	put := make(chan error, 1)
	go func() { put <- q.Put(ctx, []*Record{{Kind: Raw, Topic: "t", Body: []byte("d")}}, false) }()
	var gone []string
	n := q.DropExpired(25, func(r *Record) { gone = append(gone, string(r.Body)) })
	assert.Equal(t, 2, n)
	assert.Equal(t, []string{"a", "b"}, gone)
	require.NoError(t, <-put, "the room freed lets the blocked call in")
	gone = nil
	assert.Equal(t, 1, q.DropExpired(1<<62, func(r *Record) { gone = append(gone, string(r.Body)) }))
	assert.Equal(t, []string{"c"}, gone, "d has no time: it never expires")
	n, _ = q.Len()
	assert.Equal(t, 1, n)
}
