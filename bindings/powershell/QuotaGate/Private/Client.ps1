# The default client, and token providers written in PowerShell.

function Resolve-QgClient {
    param([object]$Client)
    if ($Client) {
        return $Client
    }
    if (-not $script:DefaultClient) {
        throw [System.InvalidOperationException]::new(
            'QuotaGate is not connected: run Connect-QgDefender first, or pass -Client.')
    }
    $script:DefaultClient
}

function ConvertFrom-QgTokenAnswer {
    # What a -TokenProvider script block returned, as the (token, seconds) pair the interop
    # layer takes: an object or hashtable with AccessToken (or Token) and ExpiresIn seconds
    # (or ExpiresOn, a point in time), or the two-element array token, seconds.
    param([object[]]$Answer)
    $token = $null
    $seconds = $null
    if ($Answer.Count -eq 1) {
        $a = $Answer[0]
        $get = {
            param([string[]]$Names)
            foreach ($n in $Names) {
                if ($a -is [System.Collections.IDictionary]) {
                    if ($a.Contains($n)) { return $a[$n] }
                } elseif ($a.PSObject.Properties[$n]) {
                    return $a.$n
                }
            }
        }
        $token = & $get 'AccessToken', 'Token', 'access_token'
        $expiresIn = & $get 'ExpiresIn', 'expires_in'
        $expiresOn = & $get 'ExpiresOn', 'expires_on'
        if ($null -ne $expiresIn) {
            $seconds = [double]$expiresIn
        } elseif ($expiresOn -is [datetimeoffset]) {
            $seconds = ($expiresOn - [datetimeoffset]::UtcNow).TotalSeconds
        } elseif ($expiresOn -is [datetime]) {
            $seconds = ($expiresOn.ToUniversalTime() - [datetime]::UtcNow).TotalSeconds
        }
    } elseif ($Answer.Count -eq 2) {
        $token = $Answer[0]
        $seconds = [double]$Answer[1]
    }
    if ($token -is [securestring]) {
        $token = [System.Net.NetworkCredential]::new('', $token).Password
    }
    if ([string]::IsNullOrEmpty($token) -or $null -eq $seconds) {
        throw [System.ArgumentException]::new(
            'the -TokenProvider script block must return @{ AccessToken = <token>; ExpiresIn = <seconds> } or the array <token>, <seconds>')
    }
    [System.Tuple]::Create([string]$token, [double]$seconds)
}

function New-QgTokenSource {
    # The script block as the Func the interop layer calls when the client needs a token.
    # It runs on the thread that sends the call: this session's, for ordinary use.
    param([scriptblock]$Provider)
    $convert = ${function:ConvertFrom-QgTokenAnswer}
    $source = {
        & $convert -Answer @(& $Provider)
    }.GetNewClosure()
    [System.Func[System.Tuple[string, double]]]$source
}
