package tbtest_test

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/thingsgate/tbgateway/tbtest"
)

// otaGateway connects the default gateway subscribed to its shared
// attributes and to the chunk responses of kind ("fw" or "sw").
func otaGateway(t *testing.T, s *tbtest.Server, kind string) *gw {
	t.Helper()
	g := dial(t, s, tbtest.DefaultToken)
	require.Equal(t, byte(1), g.sub("v1/devices/me/attributes", 1))
	require.Equal(t, byte(1), g.sub("v2/"+kind+"/response/+/chunk/+", 1))
	return g
}

func attrs(t *testing.T, g *gw) map[string]any {
	t.Helper()
	m := g.next("v1/devices/me/attributes")
	var out map[string]any
	require.NoError(t, json.Unmarshal(m.Payload(), &out), string(m.Payload()))
	return out
}

func pkgData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// download fetches a package chunk by chunk until the empty chunk past
// the end, returning the data and the number of non-empty chunks.
func download(t *testing.T, g *gw, kind, req string, size int) ([]byte, int) {
	t.Helper()
	var out []byte
	for n := 0; n < 1000; n++ {
		g.pub(fmt.Sprintf("v2/%s/request/%s/chunk/%d", kind, req, n), fmt.Sprint(size))
		m := g.next(fmt.Sprintf("v2/%s/response/%s/chunk/%d", kind, req, n))
		if len(m.Payload()) == 0 {
			return out, n
		}
		require.LessOrEqual(t, len(m.Payload()), size)
		out = append(out, m.Payload()...)
	}
	t.Fatal("download did not end")
	return nil, 0
}

func TestFirmwareDownload(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "fw")
	data := pkgData(10000)
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "gw-fw", Version: "1.2", Tag: "gw-fw 1.2", Data: data}))
	a := attrs(t, g)
	sum := sha256.Sum256(data)
	assert.Equal(t, map[string]any{"fw_title": "gw-fw", "fw_version": "1.2", "fw_tag": "gw-fw 1.2",
		"fw_size": float64(10000), "fw_checksum_algorithm": "SHA256", "fw_checksum": hex.EncodeToString(sum[:])}, a)

	g.pub("v1/devices/me/telemetry", `{"fw_state":"DOWNLOADING"}`)
	got, chunks := download(t, g, "fw", "5", 4096)
	assert.Equal(t, 3, chunks)
	assert.Len(t, got, int(a["fw_size"].(float64)))
	gotSum := sha256.Sum256(got)
	assert.Equal(t, a["fw_checksum"], hex.EncodeToString(gotSum[:]))
	g.pub("v1/devices/me/telemetry", `{"fw_state":"UPDATED","current_fw_title":"gw-fw","current_fw_version":"1.2"}`)
	p, ok := s.Latest(s.GatewayName(tbtest.DefaultToken), "fw_state")
	require.True(t, ok)
	assert.Equal(t, "UPDATED", p.Value)

	// Past the end with another chunk size, and far past it.
	g.pub("v2/fw/request/6/chunk/1", "10000")
	assert.Empty(t, g.next("v2/fw/response/6/chunk/1").Payload())
	g.pub("v2/fw/request/6/chunk/999999999999", "65536")
	assert.Empty(t, g.next("v2/fw/response/6/chunk/999999999999").Payload())
	// An empty payload reuses the request id's chunk size.
	g.pub("v2/fw/request/5/chunk/2", "")
	assert.Equal(t, data[8192:], g.next("v2/fw/response/5/chunk/2").Payload())
	// Without any known size the whole package comes at once.
	g.pub("v2/fw/request/7/chunk/0", "")
	assert.Equal(t, data, g.next("v2/fw/response/7/chunk/0").Payload())
}

func TestFirmwareCachedPerRequestID(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "fw")
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "a", Version: "1", Data: []byte("old package")}))
	attrs(t, g)
	g.pub("v2/fw/request/1/chunk/0", "3")
	assert.Equal(t, "old", string(g.next("v2/fw/response/1/chunk/0").Payload()))
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "a", Version: "2", Data: []byte("new package")}))
	assert.Equal(t, "2", attrs(t, g)["fw_version"])
	g.pub("v2/fw/request/1/chunk/1", "3")
	assert.Equal(t, " pa", string(g.next("v2/fw/response/1/chunk/1").Payload()))
	got, _ := download(t, g, "fw", "2", 4)
	assert.Equal(t, "new package", string(got))
}

func TestFirmwareOversizedChunk(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "fw")
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "a", Version: "1", Data: []byte("x")}))
	g.pubAsync("v2/fw/request/1/chunk/0", fmt.Sprint(tbtest.DefaultMaxPayloadSize+1))
	assert.Equal(t, "PAYLOAD_TOO_LARGE", string(g.next("v2/fw/error").Payload()))
	g.waitLost()
	assert.Zero(t, g.received("v2/fw/response/1/chunk/0"))
	assert.True(t, lastRejection(t, s).Closed)
}

func TestFirmwareOversizedChunkMQTT5(t *testing.T) {
	s := tbtest.NewServer(t, tbtest.WithMaxPayloadSize(1000))
	g := dial5(t, s, tbtest.DefaultToken)
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "a", Version: "1", Data: []byte("x")}))
	_, _ = g.pub("v2/fw/request/1/chunk/0", "1001", 0)
	assert.Equal(t, "PAYLOAD_TOO_LARGE", string(g.next("v2/fw/error").Payload))
	assert.Equal(t, byte(0x83), g.waitDisconnect())
}

func TestFirmwareUnassign(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "fw")
	name := s.GatewayName(tbtest.DefaultToken)
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "a", Version: "1", Data: []byte("abc")}))
	attrs(t, g)
	assert.Equal(t, "a", s.SharedAttributes(name)["fw_title"])
	s.UnassignFirmware(tbtest.DefaultToken)
	a := attrs(t, g)
	assert.ElementsMatch(t, []any{"fw_title", "fw_version", "fw_tag", "fw_size", "fw_checksum_algorithm", "fw_checksum", "fw_url"}, a["deleted"])
	assert.Empty(t, s.SharedAttributes(name))
	g.pubAsync("v2/fw/request/1/chunk/0", "100")
	assert.Equal(t, "NOT_FOUND", string(g.next("v2/fw/error").Payload()))
	g.waitLost()
}

func TestSoftwareDownloadAndURL(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "sw")
	data := pkgData(300)
	require.NoError(t, s.AssignSoftware(tbtest.DefaultToken, tbtest.Firmware{Title: "app", Version: "3", Data: data, Algorithm: tbtest.ChecksumSHA512}))
	a := attrs(t, g)
	sum := sha512.Sum512(data)
	assert.Equal(t, hex.EncodeToString(sum[:]), a["sw_checksum"])
	assert.Equal(t, "SHA512", a["sw_checksum_algorithm"])
	assert.NotContains(t, a, "sw_tag")
	got, chunks := download(t, g, "sw", "9", 100)
	assert.Equal(t, data, got)
	assert.Equal(t, 3, chunks)
	// Firmware requests are not software requests.
	g.pubAsync("v2/fw/request/9/chunk/0", "100")
	assert.Equal(t, "NOT_FOUND", string(g.next("v2/fw/error").Payload()))
	g.waitLost()

	g = otaGateway(t, s, "sw")
	require.NoError(t, s.AssignSoftware(tbtest.DefaultToken, tbtest.Firmware{Title: "app", Version: "4", URL: "https://example.com/app-4.bin"}))
	a = attrs(t, g)
	assert.Equal(t, map[string]any{"sw_title": "app", "sw_version": "4", "sw_url": "https://example.com/app-4.bin"}, a)
	assert.NotContains(t, s.SharedAttributes(s.GatewayName(tbtest.DefaultToken)), "sw_checksum", "stale key of the earlier package")
}

func TestFirmwareChecksums(t *testing.T) {
	s := tbtest.NewServer(t)
	name := s.GatewayName(tbtest.DefaultToken)
	fox := []byte("The quick brown fox jumps over the lazy dog")
	sha384 := sha512.Sum384(fox)
	for alg, want := range map[string]string{
		tbtest.ChecksumMD5:       "9e107d9d372bb6826bd81d3542a419d6",
		tbtest.ChecksumSHA256:    "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592",
		tbtest.ChecksumSHA384:    hex.EncodeToString(sha384[:]),
		tbtest.ChecksumCRC32:     "39a34f41", // 0x414fa339, Guava's little-endian bytes
		tbtest.ChecksumMurmur332: "23f74f2e", // 0x2e4ff723
		tbtest.ChecksumMurmur128: "6c1b07bc7bbc4be347939ac4a93c437a",
	} {
		require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "t", Version: "v", Data: fox, Algorithm: alg}))
		assert.Equal(t, want, s.SharedAttributes(name)["fw_checksum"], alg)
	}
	// MurmurHash3 of nothing with seed 0 is all zero bits.
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "t", Version: "v", Data: nil, Algorithm: tbtest.ChecksumMurmur128}))
	assert.Equal(t, "00000000000000000000000000000000", s.SharedAttributes(name)["fw_checksum"])
	require.NoError(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "t", Version: "v", Data: []byte("x"), Checksum: "bad"}))
	assert.Equal(t, "bad", s.SharedAttributes(name)["fw_checksum"])

	assert.Error(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Title: "t", Version: "v", Algorithm: "SHA1"}))
	assert.Error(t, s.AssignFirmware(tbtest.DefaultToken, tbtest.Firmware{Version: "v"}))
	assert.ErrorIs(t, s.AssignFirmware("nobody", tbtest.Firmware{Title: "t", Version: "v"}), tbtest.ErrUnknownGateway)
}

func TestFirmwareBadRequests(t *testing.T) {
	s := tbtest.NewServer(t)
	g := otaGateway(t, s, "fw")
	g.pub("v2/fw/request/abc/chunk/0", "10") // not ThingsBoard's pattern: unsupported topic, session stays
	assert.Equal(t, "unsupported topic", lastRejection(t, s).Reason)
	g.pubAsync("v2/fw/request/1/chunk/0", "ten")
	g.waitLost()
	assert.Equal(t, "OTA chunk size is not an integer", lastRejection(t, s).Reason)
}
