package dockercfg

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
)

func BenchmarkScratchParse(b *testing.B) {
	var doc strings.Builder
	doc.WriteString(`{"auths":{`)
	for i := range 10000 {
		if i > 0 {
			doc.WriteByte(',')
		}
		fmt.Fprintf(&doc, `"reg-%d.example.com":{"auth":%q}`, i, base64.StdEncoding.EncodeToString([]byte("robot:pw")))
	}
	doc.WriteString(`}}`)
	data := []byte(doc.String())
	for b.Loop() {
		if _, _, err := Parse(data, ConfigJSON); err != nil {
			b.Fatal(err)
		}
	}
}
