{{/*
Names and labels. Object names are "<fullname>[-suffix]", truncated to 63 characters.
*/}}
{{- define "external-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "external-server.fullname" -}}
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

{{- define "external-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object. app.kubernetes.io/name is set per component (see below): the operator's
server pods are selected by app.kubernetes.io/name=external-server + app.kubernetes.io/instance=<the
ExternalServer's name>, so nothing this chart renders may carry exactly that pair.
*/}}
{{- define "external-server.commonLabels" -}}
helm.sh/chart: {{ include "external-server.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleet-external-server
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "external-server.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "external-server.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "external-server.operator.labels" -}}
{{ include "external-server.commonLabels" . }}
app.kubernetes.io/name: {{ include "external-server.name" . }}-operator
app.kubernetes.io/component: operator
{{- end }}

{{- define "external-server.broker.fullname" -}}
{{- printf "%s-mosquitto" (include "external-server.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "external-server.broker.selectorLabels" -}}
app.kubernetes.io/name: mosquitto
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dev-broker
{{- end }}

{{- define "external-server.broker.labels" -}}
{{ include "external-server.commonLabels" . }}
app.kubernetes.io/name: mosquitto
app.kubernetes.io/component: dev-broker
{{- end }}

{{/* The development broker's address as seen from pods in any namespace. */}}
{{- define "external-server.broker.host" -}}
{{- printf "%s.%s.svc" (include "external-server.broker.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The operators' leader-election Lease (coordination.k8s.io/v1) in the release namespace. */}}
{{- define "external-server.leaseName" -}}
{{- printf "%s-operator" (include "external-server.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "external-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "external-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "external-server.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "external-server.server.image" -}}
{{- printf "%s:%s" .Values.server.image.repository (default .Chart.AppVersion .Values.server.image.tag) }}
{{- end }}

{{/* Namespaces the operator watches when not cluster-wide, as a JSON list. */}}
{{- define "external-server.watchNamespaces" -}}
{{- if .Values.operator.watch.namespaces }}
{{- .Values.operator.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
Least privilege for the operator (external_server_operator + kopf):
  externalservers            get, list, watch, patch   (kopf watches; progress annotations; removes the
                                                        finalizer earlier versions added: no
                                                        finalizer is added any more)
  externalservers/status     get, patch                (the status the operator computes)
  externalservers/finalizers update                    (ownerReferences with blockOwnerDeletion on
                                                        clusters running OwnerReferencesPermissionEnforcement)
  configmaps, services       get, list, create, patch, delete   (children; server-side apply)
  statefulsets               get, list, watch, create, patch, delete   (one per shard)
  deployments                list, delete              (shard Deployments of operator versions before
                                                        the StatefulSets, replaced on upgrade)
  podtemplates               create                    (server-side dry run only, never stored: the
                                                        API server does not validate a StatefulSet's
                                                        pod template, a PodTemplate's it does)
  pods                       list                      (the shards' pod IPs for GET /status)
  secrets                    get                       (resourceVersions of referenced Secrets only)
  events                     create                    (kopf's and the operator's Events)
Cluster-wide mode adds customresourcedefinitions list, watch (kopf notices CRD changes at run time).
Namespaced mode puts the rules above in a Role per watched namespace; kopf's runtime observation
(list/watch of namespaces and CRDs, read-only) gets its own small ClusterRole unless
rbac.clusterDiscovery is false.
*/}}
{{- define "external-server.operator.rules" -}}
- apiGroups: ["fleetprotocol.io"]
  resources: ["externalservers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fleetprotocol.io"]
  resources: ["externalservers/status"]
  verbs: ["get", "patch"]
- apiGroups: ["fleetprotocol.io"]
  resources: ["externalservers/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["podtemplates"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
