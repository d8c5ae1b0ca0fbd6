package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// TestBenchTbtest runs every run against embedded tbtest servers: each one
// stores every point exactly once with its exact value.
func TestBenchTbtest(t *testing.T) {
	cfg := defaultConfig()
	cfg.Devices, cfg.Entries, cfg.Keys = 4, 60, 3
	cfg.Runs = append(cfg.Runs, runBatched)
	cfg.HeapDevices = 200
	cfg.Tbtest = true
	cfg.Duration = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, cfg, &out), out.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var s struct {
		Broker string `json:"broker"`
		Lost   int64  `json:"lost"`
		Dups   int64  `json:"duplicates"`
		Errors int64  `json:"errors"`
		Heap   int    `json:"heap_devices"`
		Runs   []struct {
			Name   string `json:"name"`
			Points int64  `json:"points"`
			Bytes  int64  `json:"bytes"`
		} `json:"runs"`
	}
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &s))
	require.Equal(t, "tbtest", s.Broker)
	require.Zero(t, s.Lost)
	require.Zero(t, s.Dups)
	require.Zero(t, s.Errors)
	require.Equal(t, 200, s.Heap)
	require.Len(t, s.Runs, 5)
	for _, r := range s.Runs {
		require.EqualValues(t, 720, r.Points, r.Name)
		require.Positive(t, r.Bytes, r.Name)
	}
}

// verifyStored counts wrong values, duplicates and stray keys.
func TestVerifyStored(t *testing.T) {
	ds := newDataset(2, 3, 2)
	srv := tbtest.NewServer(t, tbtest.WithGateway(benchToken))
	cfg := defaultConfig()
	cfg.Broker, cfg.Token = srv.URL(), benchToken
	p, err := newRawPublisher(cfg, ds.naiveSet())
	require.NoError(t, err)
	defer p.close()
	o := p.fire(context.Background())
	require.Zero(t, o.errors)
	st := verifyStored(srv, ds)
	require.Equal(t, ds.points(), st.unique)
	require.Zero(t, st.dups+st.bad+st.malformed)

	tok := p.c.Publish(topic, 1, false, `{"Device 0000":[{"ts":1700000000000,"values":{"k0":1,"k1":2,"zz":3}},{"ts":1700000000001,"values":{"k0":0.875}}]}`)
	require.True(t, tok.WaitTimeout(5*time.Second))
	st = verifyStored(srv, ds)
	require.EqualValues(t, 3, st.bad, "k0 as a long, k1 with a wrong value, key zz")
	require.EqualValues(t, 1, st.dups)
}

func TestTbtestFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"-tbtest"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.True(t, cfg.Tbtest)
	_, err = parseFlags([]string{"-tbtest", "-broker", "tcp://127.0.0.1:1883"}, &bytes.Buffer{})
	require.ErrorContains(t, err, "drop -broker")
}
