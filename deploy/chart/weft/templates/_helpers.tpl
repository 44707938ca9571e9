{{/* The chart name, or nameOverride. */}}
{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-scoped name every object of the release is called by (or a prefix of). */}}
{{- define "weft.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The DaemonSet: the release name with "d", as the base's weftd. */}}
{{- define "weft.daemonsetName" -}}
{{- printf "%sd" (include "weft.fullname" . | trunc 62) }}
{{- end }}

{{/* Labels that pick the release's weftd pods. */}}
{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: weftd
{{- end }}

{{/* Labels on every object. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "weft.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* net-conf.json as a map, built from the typed network values; keys as weftd reads them. */}}
{{- define "weft.netConf" -}}
{{- $n := .Values.network }}
{{- $conf := dict }}
{{- if $n.network }}
{{- $_ := set $conf "Network" $n.network }}
{{- if $n.subnetLen }}{{ $_ := set $conf "SubnetLen" (int $n.subnetLen) }}{{ end }}
{{- if $n.subnetMin }}{{ $_ := set $conf "SubnetMin" $n.subnetMin }}{{ end }}
{{- if $n.subnetMax }}{{ $_ := set $conf "SubnetMax" $n.subnetMax }}{{ end }}
{{- else }}
{{- $_ := set $conf "EnableIPv4" false }}
{{- end }}
{{- if $n.ipv6Network }}
{{- $_ := set $conf "EnableIPv6" true }}
{{- $_ := set $conf "IPv6Network" $n.ipv6Network }}
{{- if $n.ipv6SubnetLen }}{{ $_ := set $conf "IPv6SubnetLen" (int $n.ipv6SubnetLen) }}{{ end }}
{{- end }}
{{- $b := $n.backend }}
{{- $backend := dict "Type" $b.type }}
{{- if eq $b.type "vxlan" }}
{{- $_ := set $backend "VNI" (int $b.vxlan.vni) }}
{{- $_ := set $backend "Port" (int $b.vxlan.port) }}
{{- if $b.vxlan.directRouting }}{{ $_ := set $backend "DirectRouting" true }}{{ end }}
{{- if $b.vxlan.mtu }}{{ $_ := set $backend "MTU" (int $b.vxlan.mtu) }}{{ end }}
{{- else if eq $b.type "wireguard" }}
{{- $w := $b.wireguard }}
{{- $_ := set $backend "ListenPort" (int $w.listenPort) }}
{{- $_ := set $backend "ListenPortV6" (int $w.listenPortV6) }}
{{- if $w.psk }}{{ $_ := set $backend "PSK" $w.psk }}{{ end }}
{{- if $w.persistentKeepaliveInterval }}{{ $_ := set $backend "PersistentKeepaliveInterval" (int $w.persistentKeepaliveInterval) }}{{ end }}
{{- $_ := set $backend "Mode" $w.mode }}
{{- if $w.mtu }}{{ $_ := set $backend "MTU" (int $w.mtu) }}{{ end }}
{{- end }}
{{- $_ := set $conf "Backend" $backend }}
{{- toJson $conf }}
{{- end }}

{{/* The CNI conflist (the same as deploy/base/10-weft.conflist). */}}
{{- define "weft.cniConf" -}}
{{- $weft := dict "type" "weft" "subnetFile" "/run/weft/subnet.env" "dataDir" "/var/lib/cni/weft" "bridge" "cni0" "hairpinMode" true "isDefaultGateway" true }}
{{- $portmap := dict "type" "portmap" "capabilities" (dict "portMappings" true) }}
{{- toJson (dict "cniVersion" "1.0.0" "name" "weft" "plugins" (list $weft $portmap)) }}
{{- end }}
