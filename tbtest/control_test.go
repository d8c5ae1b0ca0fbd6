package tbtest_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// The second telemetry of device B is lost on the way: Drop is one-shot and
// Nth skips the first match; other devices and topics are not matched.
func TestControlDropNth(t *testing.T) {
	s := tbtest.NewServer(t)
	var mu sync.Mutex
	var seen []int
	s.Control(tbtest.Match{Topic: "v1/gateway/telemetry", Device: "B", Nth: 2}, func(p *tbtest.Packet) tbtest.Action {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, p.Count)
		assert.Equal(t, []string{"B"}, p.Devices())
		assert.Equal(t, tbtest.DefaultToken, p.Username)
		return tbtest.Drop()
	})
	w, _ := rawConnect(t, s, "drop", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"B":[{"ts":1,"values":{"t":1}}]}`), 1, 1)
	w.expectPuback(1)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"ts":1,"values":{"t":1}}]}`), 1, 2)
	w.expectPuback(2)
	w.publish("v1/gateway/telemetry", []byte(`{"B":[{"ts":2,"values":{"t":2}}]}`), 1, 3)
	w.ping() // no PUBACK 3
	w.publish("v1/gateway/telemetry", []byte(`{"B":[{"ts":3,"values":{"t":3}}]}`), 1, 4)
	w.expectPuback(4)
	mu.Lock()
	assert.Equal(t, []int{2}, seen, "runs once, on the second match")
	mu.Unlock()
	assert.Equal(t, []tbtest.Point{{TS: 1, Value: int64(1)}, {TS: 3, Value: int64(3)}}, s.Series("B", "t"))
	assert.Len(t, s.Messages(), 4, "a dropped packet is still received")
}

// Pass observes without handling: the control stays and the next one runs.
// KeepControl keeps a handling control; DropControl removes it.
func TestControlKeepDropPass(t *testing.T) {
	s := tbtest.NewServer(t)
	var observed atomic.Int32
	s.Control(tbtest.Match{}, func(*tbtest.Packet) tbtest.Action {
		observed.Add(1)
		return tbtest.Pass()
	})
	s.Control(tbtest.Match{Topic: "v1/gateway/attributes"}, func(p *tbtest.Packet) tbtest.Action {
		p.KeepControl()
		if p.Count == 3 {
			p.DropControl()
		}
		return tbtest.Reason(0x97)
	})
	w, _ := rawConnect(t, s, "keep", tbtest.DefaultToken, nil)
	for id := uint16(1); id <= 4; id++ {
		w.publish("v1/gateway/attributes", []byte(`{"A":{"n":1}}`), 1, id)
		w.expectPuback(id) // MQTT 3.1.1: a plain PUBACK
	}
	assert.EqualValues(t, 4, observed.Load())
	assert.Equal(t, map[string]any{"n": int64(1)}, s.ClientAttributes("A"), "only the 4th was processed")
	assert.Empty(t, s.Rejections())
}

// Close cuts the connection at the connect of device X; the device is
// never created. A control added from within a control runs on later packets.
func TestControlCloseAndNested(t *testing.T) {
	s := tbtest.NewServer(t)
	s.Control(tbtest.Match{Topic: "v1/gateway/connect", Device: "X"}, func(*tbtest.Packet) tbtest.Action {
		s.Control(tbtest.Match{Topic: "v1/gateway/connect"}, func(*tbtest.Packet) tbtest.Action {
			return tbtest.NoAck()
		})
		return tbtest.Close()
	})
	w, _ := rawConnect(t, s, "close", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/connect", []byte(`{"device":"W"}`), 1, 1)
	w.expectPuback(1)
	w.publish("v1/gateway/connect", []byte(`{"device":"X"}`), 1, 2)
	w.expectClosed()
	_, ok := s.Device("X")
	assert.False(t, ok)
	assert.False(t, connected(s, "W"), "sessions close with the connection")

	// The nested control: processed, not acknowledged.
	w, _ = rawConnect(t, s, "nested", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/connect", []byte(`{"device":"X"}`), 1, 1)
	w.ping()
	assert.True(t, connected(s, "X"))
	w.publish("v1/gateway/connect", []byte(`{"device":"Y"}`), 1, 2)
	w.expectPuback(2)
}

func TestControlDelay(t *testing.T) {
	s := tbtest.NewServer(t)
	s.Control(tbtest.Match{Topic: "v1/gateway/telemetry"}, func(*tbtest.Packet) tbtest.Action {
		return tbtest.Delay(100 * time.Millisecond)
	})
	g := dial(t, s, tbtest.DefaultToken)
	start := time.Now()
	g.pub("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	assert.Equal(t, 1, s.TelemetryCount("A"))
}

// SleepControl parks a packet of one connection until the test wakes it;
// other connections go on meanwhile.
func TestControlSleep(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithGateway("g1"), tbtest.WithGateway("g2"))
	parked := make(chan struct{})
	wake := make(chan struct{})
	s.Control(tbtest.Match{Token: "g1"}, func(p *tbtest.Packet) tbtest.Action {
		close(parked)
		p.DropControl()
		if !p.SleepControl(wake) {
			return tbtest.Drop()
		}
		return tbtest.Pass()
	})
	g1 := dial(t, s, "g1")
	g2 := dial(t, s, "g2")
	tok := g1.pubAsync("v1/gateway/telemetry", `{"A":[{"t":1}]}`)
	<-parked
	g2.pub("v1/gateway/telemetry", `{"B":[{"t":1}]}`) // not held up
	assert.Equal(t, 1, s.TelemetryCount("B"))
	assert.Equal(t, 0, s.TelemetryCount("A"), "parked before processing")
	close(wake)
	require.True(t, tok.WaitTimeout(waitTimeout))
	require.NoError(t, tok.Error())
	assert.Equal(t, 1, s.TelemetryCount("A"))
}

// A parked packet is released, and discarded, when its connection or the
// server is closed.
func TestControlSleepEndsWithConnection(t *testing.T) {
	s := tbtest.NewServer(nil)
	parked := make(chan struct{})
	woken := make(chan bool, 1)
	s.Control(tbtest.Match{}, func(p *tbtest.Packet) tbtest.Action {
		close(parked)
		woken <- p.SleepControl(make(chan struct{}))
		return tbtest.Pass()
	})
	w, _ := rawConnect(t, s, "sleep", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 1, 1)
	<-parked
	s.Close()
	assert.False(t, <-woken)
	assert.Equal(t, 0, s.TelemetryCount("A"))
}

// Match.Conn and Match.Token select one connection; Disconnect on MQTT
// 3.1.1 is a plain close.
func TestControlMatchConnection(t *testing.T) {
	s := tbtest.NewServer(t)
	first, _ := rawConnect(t, s, "first", tbtest.DefaultToken, nil)
	first.publish("v1/gateway/connect", []byte(`{"device":"A"}`), 1, 1)
	first.expectPuback(1)
	conn := s.Messages()[0].Conn
	s.Control(tbtest.Match{Conn: conn + 1, Token: tbtest.DefaultToken}, func(*tbtest.Packet) tbtest.Action {
		return tbtest.Disconnect(0x98)
	})
	first.publish("v1/gateway/connect", []byte(`{"device":"B"}`), 1, 2)
	first.expectPuback(2)
	second, _ := rawConnect(t, s, "second", tbtest.DefaultToken, nil)
	second.publish("v1/gateway/connect", []byte(`{"device":"C"}`), 1, 1)
	second.expectClosed()
	_, ok := s.Device("C")
	assert.False(t, ok)
}

// A Packet kept after its control function returned manages nothing.
func TestControlPacketAfterReturn(t *testing.T) {
	s := tbtest.NewServer(t)
	var kept atomic.Pointer[tbtest.Packet]
	s.Control(tbtest.Match{}, func(p *tbtest.Packet) tbtest.Action {
		kept.Store(p)
		return tbtest.Pass()
	})
	w, _ := rawConnect(t, s, "late", tbtest.DefaultToken, nil)
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":1}]}`), 1, 1)
	w.expectPuback(1)
	p := kept.Load()
	require.NotNil(t, p)
	assert.False(t, p.SleepControl(make(chan struct{})), "returns at once")
	p.DropControl()
	w.publish("v1/gateway/telemetry", []byte(`{"A":[{"t":2}]}`), 1, 2)
	w.expectPuback(2)
	assert.Equal(t, 2, kept.Load().Count, "the control is still registered")
}
