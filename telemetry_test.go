package tbgateway_test

import (
	"context"
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tb "github.com/thingsgate/tbgateway"
	"github.com/thingsgate/tbgateway/tbtest"
)

// Telemetry and the values it carries, attributes' included: floats are
// stored as doubles. (How a call is split and paced is in sender_test.go;
// the encoders' bytes in telemetry_internal_test.go.)
//
// Floats are stored as doubles (README): ThingsBoard's JsonConverter stores
// a non-integral number as a DOUBLE only when its decimal scale is at most
// 16, else as a STRING, and an integral number written without a '.' as a
// LONG (WIRE.md §2.4, §10.2). tbtest types uplinks the same way, so what it
// stored is what the server would.

// floatTenth and floatFifth are variables so that their sum is computed in
// float64 (0.30000000000000004, scale 17), not as the constant 0.3.
var floatTenth, floatFifth = 0.1, 0.2

// floatCase is a float sent and the double the server must store: the
// float itself when its shortest form has a scale of at most 16, else the
// double nearest to it rounded to 16 decimals.
type floatCase struct {
	key  string
	v    float64
	want float64
}

func floatCases() []floatCase {
	rounded := func(v float64) float64 {
		f, err := strconv.ParseFloat(strconv.FormatFloat(v, 'f', 16, 64), 64)
		if err != nil {
			panic(err)
		}
		return f
	}
	exact := func(key string, v float64) floatCase { return floatCase{key, v, v} }
	round := func(key string, v float64) floatCase { return floatCase{key, v, rounded(v)} }
	return []floatCase{
		exact("scale15", 0.123456789012345),
		exact("scale16", 0.1234567890123456),
		exact("scale16small", 1.234567e-10),
		round("scale17", 0.12345678901234566),
		round("pointOnePlusPointTwo", floatTenth+floatFifth),
		round("negPointOnePlusPointTwo", -(floatTenth + floatFifth)),
		round("long", 0.123456789012345678),
		round("scale23", 1.2345678901234567e-7),
		round("tiny15e18", 1.5e-17),
		round("tiny1e20neg", -1e-20),
		round("tiny6e17", 6e-17),
		round("denormal", math.SmallestNonzeroFloat64),
		exact("huge1e21", 1e21),
		exact("huge1e300", 1e300),
		exact("max", math.MaxFloat64),
		exact("negMax", -math.MaxFloat64),
		exact("integral", 3.0),
		exact("negIntegral", -42.0),
		exact("negZero", math.Copysign(0, -1)),
		exact("plain", 21.5),
		exact("negPlain", -1.1100000000000001),
	}
}

func floatGateway(t *testing.T) (*tbtest.Server, *tb.Gateway, context.Context) {
	t.Helper()
	srv := tbtest.NewServer(t)
	return srv, dialTB(t, srv), ctxT(t)
}

// checkDouble checks that got, a stored value, is a double equal to want
// (with want's sign for zero; the server prints -0.0 as 0.0 either way).
func checkDouble(t *testing.T, what string, c floatCase, got any) {
	t.Helper()
	f, ok := got.(float64)
	if !assert.Truef(t, ok, "%s %s = %v: stored as %T %#v, want a double", what, c.key, c.v, got, got) {
		return
	}
	assert.Equalf(t, c.want, f, "%s %s = %v stored as %v", what, c.key, c.v, f)
	assert.LessOrEqualf(t, math.Abs(f-c.v), 1e-16, "%s %s = %v stored as %v", what, c.key, c.v, f)
}

func TestFloatTelemetryStoredAsDouble(t *testing.T) {
	srv, gw, ctx := floatGateway(t)
	cases := floatCases()
	values := tb.Values{}
	points := make([]tb.Point, 0, len(cases))
	for _, c := range cases {
		values[c.key] = c.v
		points = append(points, tb.Float64(c.key, c.v))
	}
	// Through Values (map) and through Points, to two devices.
	require.NoError(t, gw.PublishTelemetry(ctx, tb.Telemetry{"Float Values": {{TS: 1700000000000, Values: values}}}))
	require.NoError(t, gw.Device("Float Points").PublishTelemetry(ctx, tb.Entry{TS: 1700000000000, Points: points}))
	for _, device := range []string{"Float Values", "Float Points"} {
		for _, c := range cases {
			p, ok := srv.Latest(device, c.key)
			if !assert.Truef(t, ok, "%s: %s not stored", device, c.key) {
				continue
			}
			checkDouble(t, device, c, p.Value)
		}
	}
}

func TestFloatAttributesStoredAsDouble(t *testing.T) {
	srv, gw, ctx := floatGateway(t)
	cases := floatCases()
	values := tb.Values{}
	for _, c := range cases {
		values[c.key] = c.v
	}
	require.NoError(t, gw.Device("Float Attrs").PublishAttributes(ctx, values))
	got := srv.ClientAttributes("Float Attrs")
	for _, c := range cases {
		v, ok := got[c.key]
		if !assert.Truef(t, ok, "attribute %s not stored", c.key) {
			continue
		}
		checkDouble(t, "attribute", c, v)
	}
}

// float32 values are written in their 32-bit shortest form (float32(0.1)
// as 0.1), so the double stored is that decimal: within float32 precision
// of the value, and a double in any case.
func TestFloat32StoredAsDouble(t *testing.T) {
	srv, gw, ctx := floatGateway(t)
	cases := map[string]float32{
		"tenth": 0.1, "third": 1.0 / 3, "small": 1.2345678e-12, "tiny": 1.5e-17, "denormal": math.SmallestNonzeroFloat32,
		"integral": 3, "max": math.MaxFloat32, "neg": -2.7182817,
	}
	values := tb.Values{}
	for k, v := range cases {
		values[k] = v
	}
	require.NoError(t, gw.Device("Float32").PublishTelemetry(ctx, tb.Entry{TS: 1700000000000, Values: values}))
	for k, v := range cases {
		p, ok := srv.Latest("Float32", k)
		if !assert.Truef(t, ok, "%s not stored", k) {
			continue
		}
		f, ok := p.Value.(float64)
		if !assert.Truef(t, ok, "%s = %v: stored as %T %#v, want a double", k, v, p.Value, p.Value) {
			continue
		}
		want := float64(v)
		assert.LessOrEqualf(t, math.Abs(f-want), 1e-16+math.Abs(want)*0x1p-24, "%s = %v stored as %v", k, v, f)
	}
}
