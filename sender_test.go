package tbgateway_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/durable"
	"github.com/thingsgate/tbgateway/tbtest"
)

// TestMaxAgeDropsStaleData: data that waited out an outage longer than
// WithMaxAge is dropped, its calls failed with ErrExpired and counted;
// data younger than that is sent.
func TestMaxAgeDropsStaleData(t *testing.T) {
	const maxAge = 500 * time.Millisecond
	srv := tbtest.NewServer(t)
	srv.Stop()
	ctx := ctxT(t)
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithOfflineStart(),
		tb.WithMaxAge(maxAge), tb.WithMaxReconnectDelay(100*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = g.Close(context.Background()) })

	var wg sync.WaitGroup
	var expired, sent atomic.Int32
	publish := func(dev string) {
		for i := range 50 {
			wg.Add(1)
			require.NoError(t, g.Device(dev).PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, func(err error) {
				switch {
				case err == nil:
					sent.Add(1)
				case assert.ErrorIs(t, err, tb.ErrExpired):
					expired.Add(1)
				}
				wg.Done()
			}))
		}
	}
	publish("stale")
	// The passing of time is what this test is about: the stale data must
	// grow older than the maximum age while the server is down.
	time.Sleep(maxAge + 100*time.Millisecond)
	publish("fresh")
	require.NoError(t, srv.Start())
	wg.Wait()
	assert.EqualValues(t, 50, expired.Load())
	assert.EqualValues(t, 50, sent.Load())
	assert.Equal(t, 0, srv.TelemetryCount("stale"))
	assert.Equal(t, 50, srv.TelemetryCount("fresh"))
	assert.EqualValues(t, 50, g.Stats().Expired)
}

// TestRepairedQueueCounted: a queue store repaired at open (durable's
// WithRecover) reports what it salvaged and lost in Stats, and every
// salvaged record is sent.
func TestRepairedQueueCounted(t *testing.T) {
	dir := t.TempDir()
	q, err := durable.Open(dir)
	require.NoError(t, err)
	srv := tbtest.NewServer(t)
	srv.Stop()
	ctx := ctxT(t)
	g, err := tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithOfflineStart(), tb.WithQueueStore(q))
	require.NoError(t, err)
	for i := range 1000 {
		require.NoError(t, g.Device("d").PublishTelemetryAsync(ctx, []tb.Entry{{TS: int64(i + 1), Values: tb.Values{"n": i}}}, nil))
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_ = g.Close(short) // offline: the queue stays on disk
	cancel()

	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	require.Len(t, segs, 1)
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	require.NoError(t, err)
	st, err := f.Stat()
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, 512), st.Size()/2) // zero a stretch in the middle
	require.NoError(t, err)
	require.NoError(t, f.Close())

	_, err = durable.Open(dir)
	require.ErrorIs(t, err, durable.ErrDamaged)
	q, err = durable.Open(dir, durable.WithRecover())
	require.NoError(t, err)
	rc := q.Recovery()
	require.Positive(t, rc.Lost)
	require.NoError(t, srv.Start())
	g, err = tb.Dial(ctx, srv.URL(), tb.WithAccessToken(tbtest.DefaultToken), tb.WithQueueStore(q))
	require.NoError(t, err)
	s := g.Stats()
	assert.EqualValues(t, rc.Salvaged, s.Salvaged)
	assert.EqualValues(t, rc.Lost, s.LostOnDisk)
	require.NoError(t, g.Close(ctx)) // flushes while connected
	assert.Equal(t, 1000, rc.Salvaged+rc.Lost, "one record a call, each readable or counted lost")
	assert.Equal(t, rc.Salvaged, srv.TelemetryCount("d"), "every salvaged record arrived")
}
